/**
 * The job protocol's wire format (proto/jobs.proto): Job and JobResult messages (their
 * subjects and streams are in ./subjects.ts), result chunking under max_payload and reassembly. Decoding never
 * throws anything but JobWireError, whose reason the receivers log and count.
 */
import protobuf from 'protobufjs';
import { fromLEBytes } from '../core/io/endian.js';
import { packagePath } from '../core/paths.js';

export const JOBS_PROTOCOL_VERSION = 1;

export type JobKind = 'sample' | 'likelihood';

export interface Job {
  run: string;
  task: string;
  index: number;
  jobs: number;
  from: number;
  to: number;
  kind: JobKind;
  specJson: string;
}

export interface JobResultChunk {
  run: string;
  task: string;
  index: number;
  from: number;
  to: number;
  worker: string;
  attempt: string;
  /** JetStream delivery count of the job message (1: first delivery). */
  delivery: number;
  chunk: number;
  chunks: number;
  offset: number;
  totalBytes: number;
  data: Uint8Array;
  /** Chunk 0 only. */
  nfe: number[];
  calls: number;
  seconds: number;
  backend: string;
  /** Chunk 0 only: "ema" or "raw" weights. */
  weights: string;
  shape: number[];
  error: string;
}

export class JobWireError extends Error {
  constructor(
    readonly reason: 'undecodable' | 'version' | 'bad_chunk',
    detail: string,
  ) {
    super(`${reason}: ${detail}`);
  }
}

// ---- encoding -----------------------------------------------------------------------

let root: protobuf.Root | undefined;
function type(name: 'Job' | 'JobResult'): protobuf.Type {
  root ??= protobuf.loadSync(packagePath('proto', 'jobs.proto'));
  return root.lookupType(`scoreflow.jobs.v1.${name}`);
}

const KINDS: Record<JobKind, number> = { sample: 1, likelihood: 2 };

export function encodeJob(j: Job): Uint8Array {
  const t = type('Job');
  return t.encode(t.fromObject({ ...j, version: JOBS_PROTOCOL_VERSION, kind: KINDS[j.kind] })).finish();
}

export function decodeJob(bytes: Uint8Array): Job {
  const m = decodeAs('Job', bytes);
  const kind = (Object.keys(KINDS) as JobKind[]).find((k) => KINDS[k] === m.kind);
  if (!kind) throw new JobWireError('undecodable', `job of unknown kind ${String(m.kind)}`);
  const { version, ...rest } = m;
  void version;
  const j = { ...(rest as unknown as Job), kind };
  if (!(j.from <= j.to && j.index < j.jobs))
    throw new JobWireError('undecodable', `job ${j.index}/${j.jobs} with range [${j.from}, ${j.to})`);
  return j;
}

export function encodeResult(r: JobResultChunk): Uint8Array {
  const t = type('JobResult');
  return t.encode(t.fromObject({ ...r, version: JOBS_PROTOCOL_VERSION })).finish();
}

export function decodeResult(bytes: Uint8Array): JobResultChunk {
  const r = decodeAs('JobResult', bytes) as unknown as JobResultChunk;
  if (!(r.chunk < r.chunks && r.offset + r.data.byteLength <= r.totalBytes)) {
    throw new JobWireError('bad_chunk', `chunk ${r.chunk}/${r.chunks} at ${r.offset}+${r.data.byteLength} of ${r.totalBytes} bytes`);
  }
  return r;
}

function decodeAs(name: 'Job' | 'JobResult', bytes: Uint8Array): Record<string, unknown> {
  const t = type(name);
  let m: Record<string, unknown>;
  try {
    m = t.toObject(t.decode(bytes), { defaults: true, arrays: true, longs: Number, enums: Number });
  } catch (e) {
    throw new JobWireError('undecodable', (e as Error).message);
  }
  if (m.version !== JOBS_PROTOCOL_VERSION)
    throw new JobWireError('version', `job protocol version ${String(m.version)}, expected ${JOBS_PROTOCOL_VERSION}`);
  return m;
}

// ---- payloads -----------------------------------------------------------------------

/** The values of a result payload: little-endian floats (core/io/endian), whole ones or a JobWireError. */
export function payloadValues<T extends Float32ArrayConstructor | Float64ArrayConstructor>(bytes: Uint8Array, ctor: T): InstanceType<T> {
  if (bytes.byteLength % ctor.BYTES_PER_ELEMENT !== 0)
    throw new JobWireError('bad_chunk', `${bytes.byteLength} bytes are not whole ${ctor.BYTES_PER_ELEMENT * 8}-bit floats`);
  return fromLEBytes(ctor, bytes) as InstanceType<T>;
}

/** Bytes kept free in every result chunk for the protobuf fields (nfe of up to ~1000 items included). */
export const RESULT_HEADROOM = 8192;

/**
 * A job's result as chunks that fit under `maxPayload`: the payload cut into slices, the
 * per-job metadata (nfe, calls, ...) on chunk 0 only.
 */
export function chunkResult(
  head: Omit<JobResultChunk, 'chunk' | 'chunks' | 'offset' | 'totalBytes' | 'data'>,
  payload: Uint8Array,
  maxPayload: number,
): JobResultChunk[] {
  const room = Math.max(1024, maxPayload - RESULT_HEADROOM - 4 * head.nfe.length);
  const chunks = Math.max(1, Math.ceil(payload.byteLength / room));
  const out: JobResultChunk[] = [];
  for (let c = 0; c < chunks; c++) {
    const offset = c * room;
    const first = c === 0;
    out.push({
      ...head,
      nfe: first ? head.nfe : [],
      calls: first ? head.calls : 0,
      seconds: first ? head.seconds : 0,
      backend: first ? head.backend : '',
      weights: first ? head.weights : '',
      shape: first ? head.shape : [],
      chunk: c,
      chunks,
      offset,
      totalBytes: payload.byteLength,
      data: payload.subarray(offset, Math.min(payload.byteLength, offset + room)),
    });
  }
  return out;
}

export interface AssembledResult {
  index: number;
  from: number;
  to: number;
  worker: string;
  attempt: string;
  delivery: number;
  payload: Uint8Array;
  nfe: number[];
  calls: number;
  seconds: number;
  backend: string;
  weights: string;
  shape: number[];
}

/**
 * Collects result chunks per (job, attempt): a job's result is complete when one attempt's
 * chunks have all arrived. Keying by attempt means a worker that died halfway through
 * publishing leaves a partial that is simply never completed (and is dropped when another
 * attempt completes the job); duplicates of a chunk overwrite identical bytes.
 */
export class ResultAssembler {
  private readonly partial = new Map<string, { head?: JobResultChunk; got: Set<number>; chunks: number; payload: Uint8Array }>();
  private readonly done = new Set<number>();

  isDone(index: number): boolean {
    return this.done.has(index);
  }

  /** Adds a chunk; returns the job's result when this chunk completed it (once per job). */
  add(c: JobResultChunk): AssembledResult | undefined {
    if (this.done.has(c.index)) return undefined;
    const key = `${c.index}/${c.attempt}`;
    let p = this.partial.get(key);
    if (!p) {
      p = { got: new Set(), chunks: c.chunks, payload: new Uint8Array(c.totalBytes) };
      this.partial.set(key, p);
    }
    if (c.chunks !== p.chunks || c.totalBytes !== p.payload.byteLength) {
      throw new JobWireError(
        'bad_chunk',
        `job ${c.index} attempt ${c.attempt}: chunk says ${c.chunks} chunks of ${c.totalBytes} bytes, earlier ones ${p.chunks} of ${p.payload.byteLength}`,
      );
    }
    p.payload.set(c.data, c.offset);
    p.got.add(c.chunk);
    if (c.chunk === 0) p.head = c;
    if (p.got.size < p.chunks || !p.head) return undefined;
    this.done.add(c.index);
    for (const k of [...this.partial.keys()]) if (k.startsWith(`${c.index}/`)) this.partial.delete(k);
    const h = p.head;
    return {
      index: h.index,
      from: h.from,
      to: h.to,
      worker: h.worker,
      attempt: h.attempt,
      delivery: h.delivery,
      payload: p.payload,
      nfe: h.nfe,
      calls: h.calls,
      seconds: h.seconds,
      backend: h.backend,
      weights: h.weights,
      shape: h.shape,
    };
  }
}
