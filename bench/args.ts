// args.ts — the benchmarks' one command-line helper: `--name value`, or the fallback when absent.
export function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
