/**
 * What a worker needs from the training state it holds: the [core] Trainer behind a
 * GradPool in production (./trainer-replica.ts), or the synthetic objective of
 * ./synthetic.ts in protocol tests and the communication benchmark.
 */
import type { GradSum } from '../core/train/api.js';

export interface Replica {
  /** Updates applied so far. */
  readonly step: number;
  readonly numParams: number;
  stepsPerEpoch(): number;
  /** Samples in the global batch of an epoch's last step (the whole batch when it divides the data set). */
  lastBatch(): number;
  /** Gradient sum over samples [from, to) of `step`'s global batch, at the current parameters. */
  gradSum(step: number, from: number, to: number): Promise<GradSum>;
  /** The identical update on every replica (clip, Adam, EMA, step += 1). */
  apply(meanGrad: Float32Array): void;
  /** Equal across replicas iff their states are. */
  checksum(): string;
  exportState(): Uint8Array;
  importState(bytes: Uint8Array): void;
  close(): Promise<void>;
}

/**
 * Builds replicas from a run's configuration (JSON, as the coordinator sends it).
 * `state` (exported bytes) restores a state instead of initialising from the seed.
 */
export type ReplicaFactory = (configJson: string, state?: Uint8Array) => Promise<Replica>;
