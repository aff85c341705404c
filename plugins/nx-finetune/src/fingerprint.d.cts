export interface Fingerprint { sha256: string; size: number; files: number; hashed: number }
export function fingerprint(target: string, cacheFile?: string): Fingerprint;
export function sha256File(file: string): string;
export function listFiles(dir: string, prefix?: string): string[];
