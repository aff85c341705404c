// shard-format.ts — the token shard file (docs/engine-protocol.md, "Token shards"):
//   offset 0  char[8] "NXFTSHD1" | 8 u32 version=1 | 12 u32 seq_len T | 16 u32 n_rows R | 20 u32 flags=0
//   offset 24 rows[R], each: i32 tokens[T], i32 targets[T] (-100 = no loss), i32 positions[T]; little-endian.
export const SHARD_MAGIC = "NXFTSHD1";
export const SHARD_VERSION = 1;
export const SHARD_HEADER_BYTES = 24;
export const IGNORE_INDEX = -100;

export interface ShardRows {
  seqLen: number; // T
  nRows: number; // R
  tokens: Int32Array; // [R, T]
  targets: Int32Array; // [R, T]
  positions: Int32Array; // [R, T]
}

const littleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export function encodeShard(s: ShardRows): Buffer {
  const T = s.seqLen, R = s.nRows;
  if (s.tokens.length !== R * T || s.targets.length !== R * T || s.positions.length !== R * T) {
    throw new Error(`encodeShard: arrays must hold R*T = ${R * T} values`);
  }
  const buf = Buffer.alloc(SHARD_HEADER_BYTES + R * 3 * T * 4);
  buf.write(SHARD_MAGIC, 0, "latin1");
  buf.writeUInt32LE(SHARD_VERSION, 8);
  buf.writeUInt32LE(T, 12);
  buf.writeUInt32LE(R, 16);
  buf.writeUInt32LE(0, 20);
  // Row r: [tokens | targets | positions], each T little-endian i32.
  if (littleEndian && buf.byteOffset % 4 === 0) {
    const body = new Int32Array(buf.buffer, buf.byteOffset + SHARD_HEADER_BYTES, R * 3 * T);
    for (let r = 0; r < R; r++) {
      body.set(s.tokens.subarray(r * T, (r + 1) * T), r * 3 * T);
      body.set(s.targets.subarray(r * T, (r + 1) * T), r * 3 * T + T);
      body.set(s.positions.subarray(r * T, (r + 1) * T), r * 3 * T + 2 * T);
    }
    return buf;
  }
  let off = SHARD_HEADER_BYTES;
  for (let r = 0; r < R; r++) {
    for (const arr of [s.tokens, s.targets, s.positions]) {
      for (let t = 0; t < T; t++) { buf.writeInt32LE(arr[r * T + t], off); off += 4; }
    }
  }
  return buf;
}

export function parseShard(buf: Uint8Array, name = "shard"): ShardRows {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < SHARD_HEADER_BYTES) throw new Error(`${name}: too short for a shard header (${b.length} bytes)`);
  const magic = b.toString("latin1", 0, 8);
  if (magic !== SHARD_MAGIC) throw new Error(`${name}: bad magic ${JSON.stringify(magic)} (expected ${SHARD_MAGIC})`);
  const version = b.readUInt32LE(8);
  if (version !== SHARD_VERSION) throw new Error(`${name}: unsupported shard version ${version}`);
  const T = b.readUInt32LE(12), R = b.readUInt32LE(16), flags = b.readUInt32LE(20);
  if (flags !== 0) throw new Error(`${name}: unsupported flags ${flags}`);
  const expected = SHARD_HEADER_BYTES + R * 3 * T * 4;
  if (b.length !== expected) throw new Error(`${name}: size ${b.length} bytes, expected ${expected} for ${R} rows of ${T}`);
  const tokens = new Int32Array(R * T), targets = new Int32Array(R * T), positions = new Int32Array(R * T);
  if (littleEndian) {
    // Copy into an aligned buffer first (the file's bytes may sit at any offset).
    const body = new Int32Array(Uint8Array.from(b.subarray(SHARD_HEADER_BYTES)).buffer);
    for (let r = 0; r < R; r++) {
      tokens.set(body.subarray(r * 3 * T, r * 3 * T + T), r * T);
      targets.set(body.subarray(r * 3 * T + T, r * 3 * T + 2 * T), r * T);
      positions.set(body.subarray(r * 3 * T + 2 * T, (r + 1) * 3 * T), r * T);
    }
    return { seqLen: T, nRows: R, tokens, targets, positions };
  }
  let off = SHARD_HEADER_BYTES;
  for (let r = 0; r < R; r++) {
    for (const arr of [tokens, targets, positions]) {
      for (let t = 0; t < T; t++) { arr[r * T + t] = b.readInt32LE(off); off += 4; }
    }
  }
  return { seqLen: T, nRows: R, tokens, targets, positions };
}
