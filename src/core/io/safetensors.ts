/**
 * safetensors, the checkpoint interchange format (as written by `save_safetensors` in
 * reference/safetensors_io.py):
 *
 *   u64 LE  N                   header length in bytes
 *   N bytes JSON header         { name: {dtype, shape, data_offsets: [begin, end]}, ..., "__metadata__": {str: str} }
 *                               padded with spaces to a multiple of 8 (so the data start 8-aligned)
 *   data                        tensors' little-endian bytes; offsets are relative to the data start
 *
 * The writer reproduces the reference byte for byte (tensors sorted by name, compact JSON
 * with non-ASCII escaped as Python's json.dumps does, metadata last). The reader is strict:
 * every byte of the data must belong to exactly one tensor, and every problem is a one-line
 * Error naming the file.
 *
 * Self-verifying files: a writer asked for a digest puts `data_sha256` (SHA-256 of the whole
 * data section, hex) into `__metadata__`. Every reader checks it when present, so a flipped
 * bit or a torn copy of the tensor bytes is an error naming the file, never silent. Files
 * without it (PyTorch's, or ours from before) load as before; `digest` says which it was.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { writeFileAtomic, writeFileAtomicSync } from './atomic.js';
import { checkInputFile } from './limits.js';
import { fromLEBytes, toLEBytes, type NumericArray } from './endian.js';

export type Dtype = 'F32' | 'F64' | 'I64' | 'I32' | 'U8';
export type TensorData = NumericArray;

export interface Tensor {
  dtype: Dtype;
  shape: number[];
  data: TensorData;
}

export interface SafetensorsFile {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
  /** Where it came from (a path, or the label given to decodeSafetensors), for error messages. */
  source: string;
  /** 'verified': its data_sha256 matched the data; 'none': it carries no digest. (A mismatch throws.) */
  digest: DigestStatus;
}

export type DigestStatus = 'verified' | 'none';

/** The `__metadata__` key of the data section's SHA-256 (hex). */
export const DIGEST_KEY = 'data_sha256';

export interface EncodeOptions {
  /** Record the SHA-256 of the data section under DIGEST_KEY, so readers can verify it. */
  digest?: boolean;
}

/** A tensor to write; its dtype follows from the typed array (Float32Array -> F32, ...). */
export interface TensorInput {
  shape: readonly number[];
  data: TensorData;
}

export type TensorsInput = Record<string, TensorInput> | ReadonlyMap<string, TensorInput>;

const DTYPES: Record<Dtype, { size: number; ctor: { new (n: number): NumericArray; BYTES_PER_ELEMENT: number } }> = {
  F32: { size: 4, ctor: Float32Array },
  F64: { size: 8, ctor: Float64Array },
  I64: { size: 8, ctor: BigInt64Array },
  I32: { size: 4, ctor: Int32Array },
  U8: { size: 1, ctor: Uint8Array },
};

/** Rust's safetensors refuses headers over 100 MB; so do we (a corrupt length must not allocate GBs). */
const MAX_HEADER = 100_000_000;

/** Larger than any ScoreNet or classifier we make (the reference checkpoint is 17 MB); a bigger "checkpoint" is a mistake. */
export const MAX_SAFETENSORS_BYTES = 2 ** 31;

function dtypeOf(data: TensorData, where: string): Dtype {
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof Float64Array) return 'F64';
  if (data instanceof BigInt64Array) return 'I64';
  if (data instanceof Int32Array) return 'I32';
  if (data instanceof Uint8Array) return 'U8';
  throw new Error(`${where}: unsupported data type (want Float32Array, Float64Array, BigInt64Array, Int32Array or Uint8Array)`);
}

function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}

function isShape(s: unknown): s is number[] {
  return Array.isArray(s) && s.every((d) => Number.isSafeInteger(d) && d >= 0);
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

// ------------------------------------------------------------------ encode

/** Python json.dumps(ensure_ascii=True) escapes every non-ASCII UTF-16 unit; match it byte for byte. */
function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(/[\u0080-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

function entries(tensors: TensorsInput): [string, TensorInput][] {
  const list = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  // code-unit order, the same as Python's sorted() for names without astral characters
  return list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** The file as a list of chunks (header, then each tensor's bytes), without copying tensor data. */
export function encodeSafetensorsChunks(
  tensors: TensorsInput,
  metadata?: Record<string, string>,
  label = 'safetensors',
  opts: EncodeOptions = {},
): Uint8Array[] {
  const header: Record<string, unknown> = {};
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of entries(tensors)) {
    const where = `${label}: tensor '${name}'`;
    if (name === '' || name === '__metadata__') throw new Error(`${label}: invalid tensor name '${name}'`);
    const dtype = dtypeOf(t.data, where);
    if (!isShape(t.shape)) throw new Error(`${where}: shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`);
    if (numel(t.shape) !== t.data.length)
      throw new Error(`${where}: shape ${fmtShape(t.shape)} needs ${numel(t.shape)} values, data has ${t.data.length}`);
    const bytes = toLEBytes(t.data);
    header[name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes.byteLength] };
    offset += bytes.byteLength;
    blobs.push(bytes);
  }
  const meta = { ...(metadata ?? {}) };
  if (opts.digest) {
    const h = createHash('sha256');
    for (const b of blobs) h.update(b);
    meta[DIGEST_KEY] = h.digest('hex');
  }
  return [...headerChunks(header, meta, label), ...blobs];
}

/** The length prefix and the padded JSON header, metadata last. */
function headerChunks(header: Record<string, unknown>, metadata: Record<string, string>, label: string): Uint8Array[] {
  if (Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Error(`${label}: metadata '${k}' must be a string, got ${typeof v}`);
    }
    header = { ...header, __metadata__: { ...metadata } };
  }
  let json = asciiJson(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  return [prefix, Buffer.from(json, 'ascii')];
}

/** The whole file in memory. */
export function encodeSafetensors(tensors: TensorsInput, metadata?: Record<string, string>, opts: EncodeOptions = {}): Buffer {
  return Buffer.concat(encodeSafetensorsChunks(tensors, metadata, 'safetensors', opts));
}

/** Write atomically (see atomic.ts): a crash leaves the old file or the complete new one. */
export async function writeSafetensors(
  path: string,
  tensors: TensorsInput,
  metadata?: Record<string, string>,
  opts: EncodeOptions = {},
): Promise<void> {
  await writeFileAtomic(path, encodeSafetensorsChunks(tensors, metadata, path, opts));
}

export function writeSafetensorsSync(
  path: string,
  tensors: TensorsInput,
  metadata?: Record<string, string>,
  opts: EncodeOptions = {},
): void {
  writeFileAtomicSync(path, encodeSafetensorsChunks(tensors, metadata, path, opts));
}

/**
 * The same file with `extra` merged into its __metadata__ (tensors and data bytes untouched,
 * so a data_sha256 stays valid): how the coordinator stamps its run id and state checksum
 * into a checkpoint a worker exported. The input must be a well-formed safetensors file.
 */
export function withMetadata(buf: Uint8Array, extra: Record<string, string>, source = '<buffer>'): Uint8Array[] {
  const { json, dataStart } = parseHeader(buf, source);
  const { __metadata__: old, ...header } = json;
  return [...headerChunks(header, { ...parseMetadata(old, source), ...extra }, source), buf.subarray(dataStart)];
}

// ------------------------------------------------------------------ decode

interface Entry {
  name: string;
  dtype: Dtype;
  shape: number[];
  begin: number;
  end: number;
}

function parseHeader(buf: Uint8Array, src: string): { json: Record<string, unknown>; dataStart: number } {
  if (buf.byteLength < 8) throw new Error(`${src}: file too short for a safetensors header (${buf.byteLength} bytes)`);
  const n = new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(buf.byteLength - 8))
    throw new Error(`${src}: header length ${n} exceeds the file (${buf.byteLength} bytes); truncated or not safetensors`);
  if (n > BigInt(MAX_HEADER)) throw new Error(`${src}: header length ${n} is absurd (limit ${MAX_HEADER})`);
  const len = Number(n);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + len)));
  } catch (err) {
    throw new Error(`${src}: header is not valid UTF-8 JSON (${String((err as Error).message).split('\n')[0]})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new Error(`${src}: header is not a JSON object`);
  return { json: json as Record<string, unknown>, dataStart: 8 + len };
}

function parseMetadata(m: unknown, src: string): Record<string, string> {
  if (m === undefined) return {};
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new Error(`${src}: __metadata__ is not an object`);
  for (const [k, v] of Object.entries(m)) {
    if (typeof v !== 'string') throw new Error(`${src}: __metadata__ '${k}' is not a string`);
  }
  return { ...(m as Record<string, string>) };
}

function parseEntry(name: string, h: unknown, src: string): Entry {
  const where = `${src}: tensor '${name}'`;
  if (typeof h !== 'object' || h === null) throw new Error(`${where}: header entry is not an object`);
  const { dtype, shape, data_offsets: off } = h as Record<string, unknown>;
  if (typeof dtype !== 'string' || !(dtype in DTYPES))
    throw new Error(`${where}: unsupported dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPES).join(', ')})`);
  if (!isShape(shape)) throw new Error(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  if (!Array.isArray(off) || off.length !== 2 || !isShape(off) || off[0] > off[1]) {
    throw new Error(`${where}: data_offsets ${JSON.stringify(off)} is not [begin, end] with 0 <= begin <= end`);
  }
  const need = numel(shape) * DTYPES[dtype as Dtype].size;
  if (off[1] - off[0] !== need) {
    throw new Error(
      `${where}: data_offsets [${off[0]},${off[1]}] hold ${off[1] - off[0]} bytes but ${dtype} ${fmtShape(shape)} needs ${need}`,
    );
  }
  return { name, dtype: dtype as Dtype, shape, begin: off[0], end: off[1] };
}

/** Every data byte must belong to exactly one tensor: no overlaps, gaps, or trailing bytes. */
function checkTiling(list: Entry[], dataLen: number, src: string): void {
  const sorted = [...list].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev: Entry | undefined;
  for (const e of sorted) {
    if (e.end > dataLen)
      throw new Error(
        `${src}: tensor '${e.name}' data_offsets [${e.begin},${e.end}] run past the data (${dataLen} bytes); truncated file?`,
      );
    if (e.begin < pos) throw new Error(`${src}: tensor '${e.name}' [${e.begin},${e.end}] overlaps tensor '${prev?.name}'`);
    if (e.begin > pos) throw new Error(`${src}: data bytes [${pos},${e.begin}) belong to no tensor`);
    pos = e.end;
    prev = e;
  }
  if (pos !== dataLen) throw new Error(`${src}: ${dataLen - pos} trailing data bytes belong to no tensor`);
}

/** A file whose tensor bytes do not match its data_sha256: damaged, not merely of another kind. */
export class CorruptDataError extends Error {}

/** Compares a file's data_sha256 (when it has one) with its data section; throws one line on a mismatch. */
function checkDigest(buf: Uint8Array, dataStart: number, metadata: Record<string, string>, source: string): DigestStatus {
  const want = metadata[DIGEST_KEY];
  if (want === undefined) return 'none';
  const got = createHash('sha256').update(buf.subarray(dataStart)).digest('hex');
  if (got !== want) {
    throw new CorruptDataError(
      `${source}: corrupt: its tensor data do not match the SHA-256 recorded in the file (${DIGEST_KEY}); restore a good copy or retrain`,
    );
  }
  return 'verified';
}

/**
 * Header, metadata and digest of a file held in memory, without decoding the tensors: for
 * callers that only need to know what a file is and whether its bytes are intact.
 */
export function inspectSafetensors(buf: Uint8Array, source = '<buffer>'): { metadata: Record<string, string>; digest: DigestStatus } {
  const { json, dataStart } = parseHeader(buf, source);
  const metadata = parseMetadata(json.__metadata__, source);
  return { metadata, digest: checkDigest(buf, dataStart, metadata, source) };
}

/** Parse a whole safetensors file held in memory; `source` names it in errors. */
export function decodeSafetensors(buf: Uint8Array, source = '<buffer>'): SafetensorsFile {
  const { json, dataStart } = parseHeader(buf, source);
  const metadata = parseMetadata(json.__metadata__, source);
  const list = Object.entries(json)
    .filter(([k]) => k !== '__metadata__')
    .map(([k, h]) => parseEntry(k, h, source));
  checkTiling(list, buf.byteLength - dataStart, source);
  // After the structure checks (a truncated file says "truncated"), before any value is used.
  const digest = checkDigest(buf, dataStart, metadata, source);
  const tensors = new Map<string, Tensor>();
  for (const e of list) {
    const bytes = buf.subarray(dataStart + e.begin, dataStart + e.end);
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: fromLEBytes(DTYPES[e.dtype].ctor, bytes) });
  }
  return { tensors, metadata, source, digest };
}

/** The bytes of a safetensors file on disk: a regular file of a size that fits in memory (see limits.ts). */
export function readSafetensorsBytes(path: string): Buffer {
  checkInputFile(path, 'a safetensors file', MAX_SAFETENSORS_BYTES);
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

export function readSafetensors(path: string): SafetensorsFile {
  return decodeSafetensors(readSafetensorsBytes(path), path);
}

// ------------------------------------------------------------------ access

/** The tensor's values as float32 (F32 as is; other dtypes converted, I64 through Number). */
export function toFloat32(t: Tensor): Float32Array {
  if (t.data instanceof Float32Array) return t.data;
  if (t.data instanceof BigInt64Array) return Float32Array.from(t.data, (v) => Number(v));
  return Float32Array.from(t.data);
}

/**
 * A named tensor as float32, checked: present, of the expected shape (when given), and
 * (unless `finite: false`) free of NaN/Inf. The checks a checkpoint loader needs, with
 * one-line errors that name the file and the tensor.
 */
export function getFloat32(file: SafetensorsFile, name: string, shape?: readonly number[], opts: { finite?: boolean } = {}): Float32Array {
  const t = file.tensors.get(name);
  if (!t) throw new Error(`${file.source}: tensor '${name}' is missing`);
  if (shape && (shape.length !== t.shape.length || shape.some((d, i) => d !== t.shape[i]))) {
    throw new Error(`${file.source}: tensor '${name}' has shape ${fmtShape(t.shape)}, expected ${fmtShape(shape)}`);
  }
  const data = toFloat32(t);
  if (opts.finite !== false) {
    const bad = data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new Error(`${file.source}: tensor '${name}' has a non-finite value (${data[bad]}) at flat index ${bad}`);
  }
  return data;
}
