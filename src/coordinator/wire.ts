/**
 * The wire format shared by coordinator and workers: control messages are the protobuf
 * Envelope of proto/scoreflow.proto (loaded at run time with protobufjs); gradient chunks
 * are a small fixed binary header followed by the raw little-endian float32 values (the
 * "grad frame", laid out below and in docs/protocol.md), so that the hot path neither
 * encodes nor decodes a megabyte of protobuf. `encode`/`decode` handle both and hand out
 * the same typed envelopes. Decoding never throws past `decode`: anything malformed
 * becomes a WireError with a reason that receivers count (metrics label `reason`).
 */
import { endianness } from 'node:os';
import protobuf from 'protobufjs';
import { packagePath } from '../core/paths.js';

/** 2: gradient chunks as binary grad frames instead of protobuf GradChunk bodies. */
export const PROTOCOL_VERSION = 2;

export enum Phase {
  REDUCE = 0,
  GATHER = 1,
}

export interface Join { host: string; pid: number; device: number; threads: number; backend: string; hasState: boolean; nonce: number }
export interface Welcome { configJson: string; committed: number; init: boolean; transfer: string; nonce: number }
export interface Heartbeat { busy: boolean; reconnected: boolean }
export interface Synced { checksum: string; stepsPerEpoch: number; numParams: number; transfer: string; error: string }
export interface StepPlan {
  epoch: number; members: string[]; shardStart: number[]; globalBatch: number; checksum: boolean;
  committed: number; numParams: number; chunkFloats: number; commitEpoch: number;
}
export interface GradChunk { phase: Phase; owner: number; senderRank: number; offset: number; data: Uint8Array; lossSum: number; count: number }
export interface Ack {
  lossMean: number; checksum: string; error: string; computeMs: number; allreduceMs: number; waitMs: number;
  bytesSent: number; bytesReceived: number;
}
export interface StateRequest { donor: string; targets: string[]; committed: number; transfer: string; commitEpoch: number }
export interface StateChunk { transfer: string; index: number; count: number; totalBytes: number; data: Uint8Array; sha256: string; checksum: string }
export interface Hello { committed: number }
export interface Stop { reason: string; ok: boolean; committed: number; commitEpoch: number }

export interface Bodies {
  join: Join; welcome: Welcome; heartbeat: Heartbeat; plan: StepPlan; grad: GradChunk; ack: Ack;
  stateRequest: StateRequest; state: StateChunk; synced: Synced; hello: Hello; stop: Stop;
}
export type BodyKind = keyof Bodies;

export interface Header { version: number; run: string; worker: string; step: number; membershipEpoch: number; session: number }
/** A decoded message: the header plus exactly one body, named by `kind`. */
export type Envelope = { [K in BodyKind]: Header & { kind: K; body: Bodies[K] } }[BodyKind];
export type EnvelopeOf<K extends BodyKind> = Header & { kind: K; body: Bodies[K] };

/** Why a message was rejected: the closed set that metrics count by. */
export type { RejectReason } from '../metrics/registry.js';
import type { RejectReason } from '../metrics/registry.js';

export class WireError extends Error {
  constructor(readonly reason: RejectReason, detail: string) {
    super(`${reason}: ${detail}`);
  }
}

let envelopeType: protobuf.Type | undefined;
function envelope(): protobuf.Type {
  envelopeType ??= protobuf.loadSync(packagePath('proto', 'scoreflow.proto')).lookupType('scoreflow.v1.Envelope');
  return envelopeType;
}

export type HeaderIn = Omit<Header, 'version' | 'session'> & { session?: number };

export function encode<K extends BodyKind>(h: HeaderIn, kind: K, body: Bodies[K]): Uint8Array {
  if (kind === 'grad') {
    const g = body as GradChunk;
    return encodeGrad(h, g, bytesAsF32(g.data), 0, g.data.byteLength >> 2);
  }
  const t = envelope();
  return t.encode(t.fromObject({ ...h, version: PROTOCOL_VERSION, [kind]: body })).finish();
}

/** Envelope bodies (protobuf); `grad` travels as a grad frame instead. */
const BODY_KINDS: readonly BodyKind[] = ['join', 'welcome', 'heartbeat', 'plan', 'ack', 'stateRequest', 'state', 'synced', 'hello', 'stop'];

/** Decodes and checks the header; throws WireError (never anything else). */
export function decode(bytes: Uint8Array): Envelope {
  if (isGradFrame(bytes)) return decodeGrad(bytes);
  let m: Record<string, unknown>;
  try {
    m = envelope().decode(bytes) as unknown as Record<string, unknown>;
  } catch (e) {
    throw new WireError('undecodable', (e as Error).message);
  }
  if (m.version !== PROTOCOL_VERSION) throw new WireError('version', `protocol version ${String(m.version)}, expected ${PROTOCOL_VERSION}`);
  const kind = m.body as BodyKind | undefined;
  if (!kind || !BODY_KINDS.includes(kind)) throw new WireError('no_body', 'message has no body');
  const b = m[kind] as Record<string, unknown>;
  // proto3 leaves default scalars on the prototype; a plain copy keeps our objects simple.
  const body = envelope().lookupType(bodyTypeName(kind)).toObject(b as unknown as protobuf.Message, { defaults: true, arrays: true }) as never;
  return {
    version: m.version as number, run: m.run as string, worker: m.worker as string, step: m.step as number,
    membershipEpoch: m.membershipEpoch as number, session: m.session as number, kind, body,
  } as Envelope;
}

function bodyTypeName(kind: BodyKind): string {
  const names: Record<BodyKind, string> = {
    join: 'Join', welcome: 'Welcome', heartbeat: 'Heartbeat', plan: 'StepPlan', grad: 'GradChunk', ack: 'Ack',
    stateRequest: 'StateRequest', state: 'StateChunk', synced: 'Synced', hello: 'Hello', stop: 'Stop',
  };
  return 'scoreflow.v1.' + names[kind];
}

// ---- grad frames ------------------------------------------------------------------
//
// A gradient chunk on the wire (all integers little-endian):
//   0  4  magic 00 53 46 47 ("\0SFG"; no protobuf Envelope starts with a 0 byte)
//   4  2  u16 protocol version
//   6  1  u8 phase (0 reduce, 1 gather)
//   7  1  u8 header length H (a multiple of 4; the float data starts there)
//   8  4  u32 step            12  4  u32 membership epoch    16  4  u32 session
//  20  4  u32 owner           24  4  u32 sender rank         28  4  u32 offset
//  32  4  u32 count           36  4  u32 n (floats)          40  8  f64 loss sum
//  48  1  u8 run id length a  49  1  u8 worker id length b   50  a+b  run, worker (ASCII)
//  then zero padding up to H, then n little-endian float32 values: the frame is H + 4n bytes.

const MAGIC = [0x00, 0x53, 0x46, 0x47] as const;
const FIXED = 50;
const ASCII = new TextDecoder('latin1');

function isGradFrame(b: Uint8Array): boolean {
  return b.byteLength >= 4 && b[0] === MAGIC[0] && b[1] === MAGIC[1] && b[2] === MAGIC[2] && b[3] === MAGIC[3];
}

function idBytes(what: string, s: string): Uint8Array {
  const b = Buffer.from(s, 'latin1');
  if (b.byteLength > 255 || b.toString('latin1') !== s) throw new Error(`${what} id ${JSON.stringify(s)} cannot go in a grad frame`);
  return b;
}

/**
 * One grad frame carrying src[from, from+n) (copied once, straight into the frame). The
 * body's `data` is ignored: the floats come from `src`.
 */
export function encodeGrad(h: HeaderIn, body: Omit<GradChunk, 'data'>, src: Float32Array, from: number, n: number): Uint8Array {
  const run = idBytes('run', h.run);
  const worker = idBytes('worker', h.worker);
  const H = (FIXED + run.byteLength + worker.byteLength + 3) & ~3;
  const out = new Uint8Array(H + 4 * n);
  const dv = new DataView(out.buffer);
  out.set(MAGIC, 0);
  dv.setUint16(4, PROTOCOL_VERSION, true);
  out[6] = body.phase;
  out[7] = H;
  const u32 = [h.step, h.membershipEpoch, h.session ?? 0, body.owner, body.senderRank, body.offset, body.count, n];
  for (let k = 0; k < u32.length; k++) dv.setUint32(8 + 4 * k, u32[k] >>> 0, true);
  dv.setFloat64(40, body.lossSum, true);
  out[48] = run.byteLength;
  out[49] = worker.byteLength;
  out.set(run, FIXED);
  out.set(worker, FIXED + run.byteLength);
  if (LE) new Float32Array(out.buffer, H, n).set(src.subarray(from, from + n));
  else for (let i = 0; i < n; i++) dv.setFloat32(H + 4 * i, src[from + i], true);
  return out;
}

function decodeGrad(b: Uint8Array): EnvelopeOf<'grad'> {
  if (b.byteLength < FIXED) throw new WireError('undecodable', `grad frame of ${b.byteLength} bytes is shorter than its header`);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const version = dv.getUint16(4, true);
  if (version !== PROTOCOL_VERSION) throw new WireError('version', `protocol version ${version}, expected ${PROTOCOL_VERSION}`);
  const H = b[7];
  const [a, w] = [b[48], b[49]];
  const n = dv.getUint32(36, true);
  if (H % 4 !== 0 || H < FIXED + a + w || b.byteLength !== H + 4 * n)
    throw new WireError('undecodable', `grad frame of ${b.byteLength} bytes does not hold its ${H}-byte header and ${n} floats`);
  return {
    version, run: ASCII.decode(b.subarray(FIXED, FIXED + a)), worker: ASCII.decode(b.subarray(FIXED + a, FIXED + a + w)),
    step: dv.getUint32(8, true), membershipEpoch: dv.getUint32(12, true), session: dv.getUint32(16, true), kind: 'grad',
    body: {
      phase: b[6], owner: dv.getUint32(20, true), senderRank: dv.getUint32(24, true), offset: dv.getUint32(28, true),
      count: dv.getUint32(32, true), lossSum: dv.getFloat64(40, true), data: b.subarray(H),
    },
  };
}

// ---- subjects ---------------------------------------------------------------------

const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

/** Run and worker ids become NATS subject tokens, so they are restricted to [A-Za-z0-9_-]. */
export function checkId(what: 'run' | 'worker', id: string): string {
  if (!TOKEN.test(id)) throw new Error(`bad ${what} id ${JSON.stringify(id)}: use 1-64 characters from A-Z a-z 0-9 _ -`);
  return id;
}

export const subjects = {
  coord: (run: string) => `sf.${run}.coord`,
  ctl: (run: string) => `sf.${run}.ctl`,
  worker: (run: string, w: string) => `sf.${run}.w.${w}`,
  gather: (run: string) => `sf.${run}.ag`,
};

// ---- float32 payloads -------------------------------------------------------------

const LE = endianness() === 'LE';

/** Little-endian bytes of v[from, from+n): a view on LE hosts, a copy otherwise. */
export function f32Bytes(v: Float32Array, from: number, n: number): Uint8Array {
  if (LE) return new Uint8Array(v.buffer, v.byteOffset + from * 4, n * 4);
  const out = new Uint8Array(n * 4);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < n; i++) dv.setFloat32(i * 4, v[from + i], true);
  return out;
}

/**
 * LE float32 bytes as a Float32Array: a view when the host is LE and the bytes are
 * 4-aligned (no copy), else a copy (into `scratch` when it is long enough).
 */
export function bytesAsF32(data: Uint8Array, scratch?: Float32Array): Float32Array {
  const n = data.byteLength >> 2;
  if (LE && data.byteOffset % 4 === 0) return new Float32Array(data.buffer, data.byteOffset, n);
  const out = scratch && scratch.length >= n ? scratch.subarray(0, n) : new Float32Array(n);
  if (LE) new Uint8Array(out.buffer, out.byteOffset, n * 4).set(data.subarray(0, n * 4));
  else {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
  }
  return out;
}

/** Copies LE float32 bytes into dst at element offset `at`; returns false if any value is NaN/Inf. */
export function readF32Into(data: Uint8Array, dst: Float32Array, at: number): boolean {
  const n = data.byteLength >> 2;
  if (LE) new Uint8Array(dst.buffer, dst.byteOffset + at * 4, n * 4).set(data.subarray(0, n * 4));
  else {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < n; i++) dst[at + i] = dv.getFloat32(i * 4, true);
  }
  return allFinite(dst, at, n);
}

export function allFinite(v: Float32Array, from = 0, n = v.length - from): boolean {
  // x * 0 is ±0 for finite x and NaN for NaN/Inf, so the sum is 0 iff all are finite: no
  // branch per element (about twice as fast as testing each one).
  let s = 0;
  for (let i = from, end = from + n; i < end; i++) s += v[i] * 0;
  return s === 0;
}

/** Bytes of header overhead kept free in every chunk below max_payload (grad frames: at most 560). */
export const CHUNK_HEADROOM = 1024;

/**
 * Gradient chunks are capped at 128 KiB of floats even when the broker allows more: the
 * owner folds, averages and re-publishes chunk by chunk, so smaller chunks let the
 * all-gather of early chunks overlap the reduce-scatter of later ones, and the NATS
 * client handles messages of this size with fewer and smaller buffer copies. Measured on
 * a 2-core VM (1.05M floats, 2 workers): per-step worker CPU about 59 ms with ~1 MB
 * chunks, 36 ms with 128 KiB ones; all-reduce time roughly halved.
 */
export const MAX_CHUNK_FLOATS = 32_768;

export function chunkFloatsFor(maxPayload: number): number {
  return Math.max(1, Math.min(MAX_CHUNK_FLOATS, Math.floor((maxPayload - CHUNK_HEADROOM) / 4)));
}

/** [start, end) of N near-equal contiguous ranges of [0, total); range r goes to rank r. */
export function splitRange(total: number, n: number): number[] {
  const starts: number[] = [];
  for (let r = 0; r <= n; r++) starts.push(Math.floor((total * r) / n));
  return starts;
}
