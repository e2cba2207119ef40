/**
 * The wire format shared by coordinator and workers: proto/scoreflow.proto loaded at run
 * time with protobufjs, typed views of its messages, subjects, and the float32 payload
 * helpers. Decoding never throws past `decode`: anything malformed becomes a WireError
 * with a reason that receivers count (metrics label `reason`).
 */
import { endianness } from 'node:os';
import protobuf from 'protobufjs';
import { packagePath } from '../core/paths.js';

export const PROTOCOL_VERSION = 1;

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

export function encode<K extends BodyKind>(h: Omit<Header, 'version' | 'session'> & { session?: number }, kind: K, body: Bodies[K]): Uint8Array {
  const t = envelope();
  return t.encode(t.fromObject({ ...h, version: PROTOCOL_VERSION, [kind]: body })).finish();
}

const BODY_KINDS: readonly BodyKind[] = ['join', 'welcome', 'heartbeat', 'plan', 'grad', 'ack', 'stateRequest', 'state', 'synced', 'hello', 'stop'];

/** Decodes and checks the header; throws WireError (never anything else). */
export function decode(bytes: Uint8Array): Envelope {
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

/** Copies LE float32 bytes into dst at element offset `at`; returns false if any value is NaN/Inf. */
export function readF32Into(data: Uint8Array, dst: Float32Array, at: number): boolean {
  const n = data.byteLength >> 2;
  if (LE) new Uint8Array(dst.buffer, dst.byteOffset + at * 4, n * 4).set(data);
  else {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < n; i++) dst[at + i] = dv.getFloat32(i * 4, true);
  }
  return allFinite(dst, at, n);
}

export function allFinite(v: Float32Array, from = 0, n = v.length - from): boolean {
  for (let i = from, end = from + n; i < end; i++) {
    const x = v[i];
    // x - x is 0 for finite x and NaN for NaN/Inf: one comparison per element.
    if (x - x !== 0) return false;
  }
  return true;
}

/** Bytes of protobuf/header overhead kept free in every chunk below max_payload. */
export const CHUNK_HEADROOM = 1024;

export function chunkFloatsFor(maxPayload: number): number {
  return Math.max(1, Math.floor((maxPayload - CHUNK_HEADROOM) / 4));
}

/** [start, end) of N near-equal contiguous ranges of [0, total); range r goes to rank r. */
export function splitRange(total: number, n: number): number[] {
  const starts: number[] = [];
  for (let r = 0; r <= n; r++) starts.push(Math.floor((total * r) / n));
  return starts;
}
