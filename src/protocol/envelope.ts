/**
 * The training protocol's messages: every NATS message of a run is one protobuf Envelope of
 * proto/scoreflow.proto (loaded at run time with protobufjs). `encode`/`decode` hand out
 * typed envelopes; gradient chunks have an encoder of their own (`encodeGrad`) that writes
 * the protobuf header by hand and copies the floats once behind it, since they are most of
 * the bytes on the wire. Decoding never throws past `decode` anything but a WireError, with
 * a reason that receivers count (metrics label `reason`).
 */
import protobuf from 'protobufjs';
import { HOST_LE } from '../core/io/endian.js';
import { packagePath } from '../core/paths.js';
import { VersionError, WireError } from './errors.js';

export { VersionError, WireError, type RejectReason } from './errors.js';

/** 4: a plan covers a range of steps, acks are asynchronous, Commit is a message (3: one step per plan, two-phase commit). */
export const PROTOCOL_VERSION = 4;

export enum Phase {
  REDUCE = 0,
  GATHER = 1,
}

export interface Join {
  host: string;
  pid: number;
  device: number;
  threads: number;
  backend: string;
  hasState: boolean;
  nonce: number;
  transports: string[];
  dataHost: string;
  storePort: number;
  transportNote: string;
  /** The worker's build fingerprint (src/cluster/fingerprint.ts). */
  build: string;
}
export interface Welcome {
  configJson: string;
  committed: number;
  init: boolean;
  transfer: string;
  nonce: number;
  keep: boolean;
}
export interface Heartbeat {
  busy: boolean;
  reconnected: boolean;
}
export interface Synced {
  checksum: string;
  stepsPerEpoch: number;
  numParams: number;
  transfer: string;
  error: string;
  lastBatch: number;
}
export interface StepPlan {
  members: string[];
  numParams: number;
  chunkFloats: number;
  transport: string;
  store: string;
  until: number;
  batchSize: number;
  stepsPerEpoch: number;
  lastBatch: number;
  commitEvery: number;
  checksumEvery: number;
  bucketFloats: number;
}
export interface Commit {
  step: number;
}
export interface GradChunk {
  phase: Phase;
  owner: number;
  senderRank: number;
  offset: number;
  count: number;
  data: Uint8Array;
}
export interface Ack {
  checksum: string;
  error: string;
  computeMs: number;
  allreduceMs: number;
  waitMs: number;
  bytesSent: number;
  bytesReceived: number;
  lossSum: number;
  count: number;
  stepMs: number;
}
export interface StateRequest {
  donor: string;
  targets: string[];
  step: number;
  transfer: string;
}
export interface StateChunk {
  transfer: string;
  index: number;
  count: number;
  totalBytes: number;
  data: Uint8Array;
  sha256: string;
  checksum: string;
}
export interface Hello {
  committed: number;
}
export interface Stop {
  reason: string;
  ok: boolean;
  nonce: number;
}

export interface Bodies {
  join: Join;
  welcome: Welcome;
  heartbeat: Heartbeat;
  plan: StepPlan;
  commit: Commit;
  grad: GradChunk;
  ack: Ack;
  stateRequest: StateRequest;
  state: StateChunk;
  synced: Synced;
  hello: Hello;
  stop: Stop;
}
export type BodyKind = keyof Bodies;

export interface Header {
  version: number;
  run: string;
  worker: string;
  step: number;
  membershipEpoch: number;
  session: number;
  /** The sender's origin and its message number within it (./sequence.ts). */
  origin: number;
  seq: number;
}
/** A decoded message: the header plus exactly one body, named by `kind`. */
export type Envelope = { [K in BodyKind]: Header & { kind: K; body: Bodies[K] } }[BodyKind];
export type EnvelopeOf<K extends BodyKind> = Header & { kind: K; body: Bodies[K] };
export type HeaderIn = Omit<Header, 'version' | 'session' | 'origin' | 'seq'> & { session?: number; origin?: number; seq?: number };

const BODY_TYPES: Record<BodyKind, string> = {
  join: 'Join',
  welcome: 'Welcome',
  heartbeat: 'Heartbeat',
  plan: 'StepPlan',
  commit: 'Commit',
  grad: 'GradChunk',
  ack: 'Ack',
  stateRequest: 'StateRequest',
  state: 'StateChunk',
  synced: 'Synced',
  hello: 'Hello',
  stop: 'Stop',
};

let root: protobuf.Root | undefined;
function type(name: string): protobuf.Type {
  root ??= protobuf.loadSync(packagePath('proto', 'scoreflow.proto'));
  return root.lookupType('scoreflow.v1.' + name);
}

export function encode<K extends BodyKind>(h: HeaderIn, kind: K, body: Bodies[K]): Uint8Array {
  if (kind === 'grad') {
    const g = body as GradChunk;
    return encodeGrad(h, g, leF32(g.data), 0, g.data.byteLength >> 2);
  }
  const t = type('Envelope');
  return t.encode(t.fromObject({ ...h, version: PROTOCOL_VERSION, [kind]: body })).finish();
}

/** Decodes and checks the header; throws WireError (never anything else). */
export function decode(bytes: Uint8Array): Envelope {
  let m: Record<string, unknown>;
  try {
    m = type('Envelope').decode(bytes) as unknown as Record<string, unknown>;
  } catch (e) {
    throw new WireError('undecodable', (e as Error).message);
  }
  if (m.version !== PROTOCOL_VERSION)
    throw new VersionError(Number(m.version), String(m.body ?? ''), String(m.run ?? ''), String(m.worker ?? ''), PROTOCOL_VERSION);
  const kind = m.body as BodyKind | undefined;
  if (!kind || !(kind in BODY_TYPES)) throw new WireError('no_body', 'message has no body');
  // proto3 leaves default scalars on the prototype; a plain copy keeps our objects simple
  // (bytes stay views into `bytes`: a gradient chunk is read in place).
  const body = type(BODY_TYPES[kind]).toObject(m[kind] as protobuf.Message, { defaults: true, arrays: true }) as never;
  return {
    version: m.version as number,
    run: m.run as string,
    worker: m.worker as string,
    step: m.step as number,
    membershipEpoch: m.membershipEpoch as number,
    session: m.session as number,
    origin: m.origin as number,
    seq: m.seq as number,
    kind,
    body,
  } as Envelope;
}

// ---- gradient chunks, one copy --------------------------------------------------------
//
// The bytes of an Envelope with a GradChunk body, written in field order:
//   Envelope 1 version, 2 run, 3 worker, 4 step, 5 membership_epoch, 6 session,
//            7 origin, 8 seq (doubles), 21 grad (length-delimited):
//     GradChunk 1 phase, 2 owner, 3 sender_rank, 4 offset, 5 count, 14 pad, 15 data
// `pad` (0-3 zero bytes, chosen here) puts the first float at a multiple of 4 bytes from the
// start of the message, so a receiver whose buffer is aligned reads the floats in place.

function varintLen(v: number): number {
  let n = 1;
  for (v >>>= 0; v >= 0x80; v >>>= 7) n++;
  return n;
}

class Bytes {
  at = 0;
  constructor(readonly out: Uint8Array) {}
  varint(v: number): this {
    for (v >>>= 0; v >= 0x80; v >>>= 7) this.out[this.at++] = (v & 0x7f) | 0x80;
    this.out[this.at++] = v;
    return this;
  }
  /** A varint field (proto3: zero is the default and left out). */
  uint(field: number, v: number): this {
    return v === 0 ? this : this.varint(field << 3).varint(v);
  }
  /** A double field (proto3: zero left out). */
  double(field: number, v: number): this {
    if (v === 0) return this;
    this.varint((field << 3) | 1);
    new DataView(this.out.buffer, this.out.byteOffset).setFloat64(this.at, v, true);
    this.at += 8;
    return this;
  }
  bytes(field: number, b: Uint8Array | number): this {
    const n = typeof b === 'number' ? b : b.byteLength;
    this.varint((field << 3) | 2).varint(n);
    if (typeof b !== 'number') this.out.set(b, this.at);
    this.at += n;
    return this;
  }
}

function uintLen(field: number, v: number): number {
  return v === 0 ? 0 : varintLen(field << 3) + varintLen(v);
}

function bytesLen(field: number, n: number): number {
  return varintLen((field << 3) | 2) + varintLen(n) + n;
}

const UTF8 = new TextEncoder();

/**
 * One gradient chunk carrying src[from, from+n), as an Envelope with a GradChunk body. The
 * floats are copied once, straight into the message; `body.data` is ignored.
 */
export function encodeGrad(h: HeaderIn, body: Omit<GradChunk, 'data'>, src: Float32Array, from: number, n: number): Uint8Array {
  const run = UTF8.encode(h.run);
  const worker = UTF8.encode(h.worker);
  const session = h.session ?? 0;
  const [origin, seq] = [h.origin ?? 0, h.seq ?? 0];
  const head =
    uintLen(1, PROTOCOL_VERSION) +
    bytesLen(2, run.byteLength) +
    (worker.byteLength ? bytesLen(3, worker.byteLength) : 0) +
    uintLen(4, h.step) +
    uintLen(5, h.membershipEpoch) +
    uintLen(6, session) +
    (origin ? 9 : 0) +
    (seq ? 9 : 0);
  const fields =
    uintLen(1, body.phase) + uintLen(2, body.owner) + uintLen(3, body.senderRank) + uintLen(4, body.offset) + uintLen(5, body.count);
  const data = bytesLen(15, 4 * n);
  // The float offset from the start is head + tag(21) + len(inner) + fields + pad field + data's tag and length.
  let pad = 0;
  let inner = 0;
  for (; ; pad++) {
    inner = fields + bytesLen(14, pad) + data;
    const floatsAt = head + varintLen((21 << 3) | 2) + varintLen(inner) + inner - 4 * n;
    if (floatsAt % 4 === 0) break;
  }
  const out = new Uint8Array(head + varintLen((21 << 3) | 2) + varintLen(inner) + inner);
  const w = new Bytes(out).uint(1, PROTOCOL_VERSION).bytes(2, run);
  if (worker.byteLength) w.bytes(3, worker);
  w.uint(4, h.step)
    .uint(5, h.membershipEpoch)
    .uint(6, session)
    .double(7, origin)
    .double(8, seq)
    .varint((21 << 3) | 2)
    .varint(inner);
  w.uint(1, body.phase).uint(2, body.owner).uint(3, body.senderRank).uint(4, body.offset).uint(5, body.count).bytes(14, pad);
  w.varint((15 << 3) | 2).varint(4 * n);
  if (HOST_LE) new Uint8Array(out.buffer, w.at, 4 * n).set(new Uint8Array(src.buffer, src.byteOffset + 4 * from, 4 * n));
  else {
    const dv = new DataView(out.buffer, w.at, 4 * n);
    for (let i = 0; i < n; i++) dv.setFloat32(4 * i, src[from + i], true);
  }
  return out;
}

/**
 * Little-endian float32 bytes as a Float32Array: a view when the host is LE and the bytes
 * are 4-aligned (no copy), else a copy (into `scratch` when it is long enough).
 */
export function leF32(data: Uint8Array, scratch?: Float32Array): Float32Array {
  const n = data.byteLength >> 2;
  if (HOST_LE && data.byteOffset % 4 === 0) return new Float32Array(data.buffer, data.byteOffset, n);
  const out = scratch && scratch.length >= n ? scratch.subarray(0, n) : new Float32Array(n);
  if (HOST_LE) new Uint8Array(out.buffer, out.byteOffset, n * 4).set(data.subarray(0, n * 4));
  else {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
  }
  return out;
}
