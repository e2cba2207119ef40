/**
 * What a worker needs from the training state it holds: the [core] Trainer behind a
 * GradPool in production (./trainer-replica.ts), or the synthetic objective of
 * ./synthetic.ts in protocol tests and the communication benchmark.
 */
import type { GradSink, GradSum } from '../core/train/api.js';

/** A copy of a replica's whole state at one step (parameters, optimizer moments, EMA): a rollback point. */
export interface Snapshot {
  readonly step: number;
}

export interface Replica {
  /** Updates applied so far. */
  readonly step: number;
  readonly numParams: number;
  /**
   * Where each parameter tensor starts in the flat vector, ascending from 0: the all-reduce's
   * buckets are cut there (the same on every member, since the run's config fixes the model).
   */
  readonly paramStarts: readonly number[];
  stepsPerEpoch(): number;
  /** Samples in the global batch of an epoch's last step (the whole batch when it divides the data set). */
  lastBatch(): number;
  /** Gradient sum over samples [from, to) of `step`'s global batch, at the current parameters; a sink gets it part by part as it is computed. */
  gradSum(step: number, from: number, to: number, sink?: GradSink): Promise<GradSum>;
  /**
   * The identical update on every replica (clip, Adam, EMA, step += 1) with the mean of the
   * all-reduced gradient sum over `count` samples; NonFiniteError, changing nothing, on a non-finite sum.
   */
  apply(gradSum: Float32Array, count: number): void;
  /** A copy of the whole state, to go back to with `restore`; written into `reuse` (a snapshot nobody holds any more) when given. */
  snapshot(reuse?: Snapshot): Snapshot;
  /** Makes the state the snapshot's (the snapshot stays usable). */
  restore(s: Snapshot): void;
  /** Equal across replicas iff their states are (of `s` when given, else the current state). */
  checksum(s?: Snapshot): string;
  /** The current state, or the snapshot `s`, as the bytes a state transfer or checkpoint carries. */
  exportState(s?: Snapshot): Uint8Array;
  importState(bytes: Uint8Array): void;
  close(): Promise<void>;
}

/**
 * Builds replicas from a run's configuration (JSON, as the coordinator sends it).
 * `state` (exported bytes) restores a state instead of initialising from the seed.
 */
export type ReplicaFactory = (configJson: string, state?: Uint8Array) => Promise<Replica>;
