/**
 * The production Replica: the [core] Trainer (parameters, Adam, EMA) with its gradients
 * computed by a GradPool (piscina threads, one backend instance each). The pool and the
 * images are kept across replicas of the same configuration, since a worker replaces its
 * replica on every state transfer and starting threads costs seconds.
 */
import { loadImages } from '../core/data/mnist.js';
import { loadCheckpointBytes } from '../core/train/checkpoint.js';
import { trainConfig, type TrainConfig } from '../core/train/config.js';
import { GradPool } from '../core/train/pool.js';
import { Trainer } from '../core/train/trainer.js';
import { nativeAdamFor } from '../core/backend/native-adam.js';
import type { OptimState } from '../core/train/adam.js';
import type { GradSink } from '../core/train/api.js';
import type { Replica, ReplicaFactory } from './replica.js';
import { isSyntheticConfig, syntheticReplica } from './synthetic.js';

export interface TrainerReplicaOptions {
  /** The backend initialised in this process (initBackend's answer). */
  backend: string;
  threads: number;
  log?: (line: string) => void;
}

/** 'train[:1000]' -> loadImages('train', {limit: 1000}), as configFromFlags records it. */
function loadDataset(dataset: string) {
  const m = /^(.*)\[:(\d+)\]$/.exec(dataset);
  return m ? loadImages(m[1], { limit: Number(m[2]) }) : loadImages(dataset);
}

class TrainerReplica implements Replica {
  readonly paramStarts: readonly number[];
  constructor(private readonly t: Trainer) {
    this.paramStarts = t.specs.map((s) => s.offset);
  }
  get step(): number {
    return this.t.step;
  }
  get numParams(): number {
    return this.t.numParams;
  }
  get trainer(): Trainer {
    return this.t;
  }
  stepsPerEpoch(): number {
    return this.t.stepsPerEpoch();
  }
  lastBatch(): number {
    return this.t.batch(this.t.stepsPerEpoch() - 1).indices.length;
  }
  gradSum(step: number, from: number, to: number, sink?: GradSink) {
    return this.t.gradSum(step, from, to, sink);
  }
  apply(gradSum: Float32Array, count: number): void {
    this.t.apply(gradSum, count);
  }
  snapshot(reuse?: OptimState): OptimState {
    return this.t.snapshot(reuse);
  }
  restore(s: OptimState): void {
    this.t.restore(s);
  }
  checksum(s?: OptimState): string {
    return this.t.checksum(s);
  }
  exportState(s?: OptimState): Uint8Array {
    return this.t.exportState({}, s);
  }
  importState(bytes: Uint8Array): void {
    this.t.importState(bytes);
  }
  async close(): Promise<void> {
    this.t.dispose();
  }
}

/** A factory for Trainer replicas (and synthetic ones, when the run's config asks for them). */
export function trainerReplicas(o: TrainerReplicaOptions): ReplicaFactory & { close(): Promise<void> } {
  let cached: { key: string; pool: GradPool; data: ReturnType<typeof loadImages> } | undefined;
  const factory = async (configJson: string, state?: Uint8Array): Promise<Replica> => {
    const raw = JSON.parse(configJson) as unknown;
    if (isSyntheticConfig(raw)) return syntheticReplica(configJson, state);
    // A transferred state carries its own config (a resumed run's may differ from the flags).
    const cfg: TrainConfig = state ? loadCheckpointBytes(state).config : trainConfig(raw as Parameters<typeof trainConfig>[0]);
    const key = JSON.stringify(cfg);
    if (cached?.key !== key) {
      await cached?.pool.close();
      const data = loadDataset(cfg.dataset);
      const pool = await GradPool.create({ threads: o.threads, backend: o.backend, config: cfg, data });
      o.log?.(`worker: ${data.n} images from ${cfg.dataset}, ${o.threads} compute thread(s) on ${o.backend}`);
      cached = { key, pool, data };
    }
    const t = state ? Trainer.fromState(state, cached.data) : Trainer.create(cfg, cached.data);
    return new TrainerReplica(t.setGradSource(cached.pool).setAdam(nativeAdamFor(o.backend)));
  };
  return Object.assign(factory, { close: async () => cached?.pool.close() });
}
