/**
 * Data-parallel gradient computation on one machine: piscina worker threads, each with its
 * own tfjs backend instance on one compute thread (wasm runs one thread per instance; torch is
 * given one intra-op thread), sharing the images and the parameters through SharedArrayBuffers.
 * A slice of the batch is cut into one contiguous part per thread (or per shard, see
 * `shards`) and the parts' gradient sums are added in part order, so the result does not depend
 * on which thread finished first.
 */
import { Piscina } from 'piscina';
import { rangeBounds } from '../data/batches.js';
import type { GradSink, GradSource, GradSum } from './api.js';
import type { TrainConfig } from './config.js';
import { GradEngine, type Images } from './engine.js';
import { computeCores } from '../cpus.js';

export interface GradPoolOptions {
  /** Compute threads; 1 computes in the calling thread. Default: the number of cores. */
  threads?: number;
  /**
   * Compute the slice as a cluster of `shards` workers with one compute thread each does: cut
   * into the cluster's contiguous shards, each shard's gradient sum by one backend instance on
   * one thread (the calling thread's backend must then have one thread too), the sums added in
   * rank order (the first shard starts the sum, as the nats transport folds them). Default:
   * one part per thread.
   */
  shards?: number;
  backend: string;
  config: TrainConfig;
  data: Images;
}

export interface ThreadInit {
  backend: string;
  config: TrainConfig;
  images: { n: number; h: number; w: number; buffer: SharedArrayBuffer };
  params: SharedArrayBuffer;
}

export interface ThreadTask {
  version: number;
  step: number;
  from: number;
  to: number;
}

/**
 * GradPool threads: one backend instance per core for single-threaded engines (wasm, cpu), else
 * one multi-threaded instance; with `shards`, one single-threaded instance per shard, at most
 * `threads` of them.
 */
export function poolThreads(backend: string, threads?: number, shards?: number): number {
  if (shards !== undefined) return Math.min(shards, threads ?? computeCores());
  return backend === 'wasm' || backend === 'cpu' ? (threads ?? computeCores()) : 1;
}

/**
 * Contiguous near-equal parts of [from, to), at most `parts` of them, none empty: the shards
 * the coordinator plans for `parts` workers (rangeBounds over at most one worker per sample).
 */
export function splitRange(from: number, to: number, parts: number): Array<[number, number]> {
  const b = rangeBounds(to - from, Math.max(1, Math.min(parts, to - from)));
  return b.slice(1).map((end, i) => [from + b[i], from + end]);
}

/** Adds b into a. */
export function addInto(a: Float32Array, b: Float32Array): void {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

export class GradPool implements GradSource {
  private constructor(
    readonly threads: number,
    readonly shards: number | undefined,
    private readonly local: GradEngine | null,
    private readonly piscina: Piscina | null,
    private readonly shared: Float32Array | null,
  ) {}

  private sharedVersion = -1;

  static async create(opts: GradPoolOptions): Promise<GradPool> {
    const threads = Math.max(1, Math.floor(opts.threads ?? computeCores()));
    const shards = opts.shards;
    if (shards !== undefined && !(Number.isInteger(shards) && shards >= 1))
      throw new Error(`shards must be a positive integer, got ${shards}`);
    if (threads === 1) return new GradPool(1, shards, new GradEngine(opts.config, opts.data), null, null);
    const { n, h, w, data } = opts.data;
    const images = new SharedArrayBuffer(data.byteLength);
    new Float32Array(images).set(data);
    const engine = new GradEngine(opts.config, opts.data); // validates config and data here, in one place
    const params = new SharedArrayBuffer(engine.numParams * 4);
    engine.dispose();
    const workerData: ThreadInit = { backend: opts.backend, config: opts.config, images: { n, h, w, buffer: images }, params };
    const piscina = new Piscina({
      filename: new URL('./grad-thread.js', import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: 2 ** 31 - 1,
      workerData,
    });
    const pool = new GradPool(threads, shards, null, piscina, new Float32Array(params));
    // Fail now, with the thread's message, if a backend cannot start in a worker thread.
    await Promise.all(Array.from({ length: threads }, () => piscina.run(null, { name: 'ready' })));
    return pool;
  }

  /**
   * Sum of per-sample gradients over samples [from, to) of `step`'s global batch. A sink gets
   * each parameter's gradient during the backward pass when this thread computes the whole
   * slice; otherwise the whole sum at the end.
   */
  async gradSum(params: Float32Array, version: number, step: number, from: number, to: number, sink?: GradSink): Promise<GradSum> {
    const parts = splitRange(from, to, this.shards ?? this.threads);
    let results: GradSum[];
    if (this.local) {
      if (parts.length === 1) return this.local.gradSum(params, version, step, from, to, sink);
      results = parts.map(([a, b]) => this.local!.gradSum(params, version, step, a, b));
    } else {
      if (this.sharedVersion !== version) {
        this.shared!.set(params);
        this.sharedVersion = version;
      }
      results = await Promise.all(
        parts.map(([a, b]) => this.piscina!.run({ version, step, from: a, to: b } satisfies ThreadTask) as Promise<GradSum>),
      );
    }
    const total = results[0];
    for (let i = 1; i < results.length; i++) {
      addInto(total.grad, results[i].grad);
      total.lossSum += results[i].lossSum;
      total.count += results[i].count;
    }
    if (!sink) return total;
    sink.grad.set(total.grad);
    sink.ready(0, total.grad.length);
    return { ...total, grad: sink.grad };
  }

  async close(): Promise<void> {
    this.local?.dispose();
    await this.piscina?.destroy();
  }
}
