/**
 * The seam between a worker's step and how gradient sums move between workers. A step's
 * all-reduce is: `begin(ctx)` when the plan arrives (a transport may get ready while the
 * gradient is computed), `reduce(local)` with this worker's shard sum, resolving to the
 * *sum* over all members (averaging is core/train/step.ts's, the same on every transport).
 * A reduce that cannot finish (a peer gone) rejects or never resolves; either
 * way the coordinator re-plans the step under a new membership epoch, and the worker begins
 * again.
 *
 *   nats        reduce-scatter to rank-owned ranges and all-gather through the broker,
 *               summed in rank order (./nats.ts). Works wherever the broker is reachable.
 *   gloo, nccl  a c10d process group of the plan's members (./c10d.ts over ./process-group.ts): direct TCP between
 *               workers on CPUs (Gloo), NCCL on GPUs. They overlap the all-reduce with the
 *               backward pass: `sink()` hands the gradient computation a GradSink, whose
 *               buckets go out as soon as the backward pass has finished them.
 */
import type { GradSink, GradSum } from '../../core/train/api.js';

import type { TransportName } from '../../protocol/transports.js';

export type { TransportName } from '../../protocol/transports.js';

/** What one step's all-reduce needs to know, all of it from the plan. */
export interface StepContext {
  run: string;
  me: string;
  step: number;
  membershipEpoch: number;
  members: string[];
  numParams: number;
  chunkFloats: number;
  globalBatch: number;
  session: number;
  /** The plan's shard bounds (N+1 values): every contribution's count is checked against its shard. */
  shardStart: number[];
  /** gloo/nccl: rank 0's store, host:port. */
  store: string;
  /**
   * Where each parameter tensor starts in the gradient vector (ascending, from 0): the replica's
   * layout, which the run's config fixes, so every member cuts its buckets at the same places.
   */
  paramStarts: readonly number[];
  /** gloo/nccl: buckets of at least this many floats during the backward pass; 0: one all-reduce after it. */
  bucketFloats: number;
}

export interface Collective {
  readonly transport: TransportName;
  /** Bytes this worker sent and received in the current (or last) step, for its ack. */
  readonly bytesSent: number;
  readonly bytesReceived: number;
  begin(ctx: StepContext): void;
  /** After begin: where the gradient sum goes while it is computed, if this transport reduces parts of it early (then `reduce` gets the sum in the sink's vector). */
  sink?(): GradSink | undefined;
  reduce(local: GradSum): Promise<Float32Array>;
  close(): void;
}

/** Whether traffic of (membershipEpoch, step) belongs to a plan after ctx's. */
export function newer(m: { membershipEpoch: number; step: number }, ctx: { membershipEpoch: number; step: number }): boolean {
  return m.membershipEpoch > ctx.membershipEpoch || (m.membershipEpoch === ctx.membershipEpoch && m.step > ctx.step);
}
