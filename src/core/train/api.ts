/**
 * The contract between the training core and whoever drives it (the `scoreflow train`
 * loop, or a cluster worker). A step is split into: gradient sums over any slice of the
 * global batch (computed anywhere, added in a fixed order), then one identical update.
 */
export interface GradSum {
  /** Sum over the slice's samples of d(per-sample loss)/d(params), flattened in paramSpecs order. */
  grad: Float32Array;
  /** Sum of the per-sample losses over the slice. */
  lossSum: number;
  /** Number of samples in the slice. */
  count: number;
}

/**
 * Where a gradient sum goes while the backward pass computes it (a cluster worker overlaps
 * the all-reduce with the rest of the backward pass this way). The source writes each
 * parameter's gradient sum into `grad` at its offset and calls `ready` as soon as that range
 * is final, in the order the backward pass produces them; the GradSum it returns has `grad`
 * as its vector. The values are the same as without a sink, bit for bit.
 */
export interface GradSink {
  readonly grad: Float32Array;
  ready(offset: number, size: number): void;
}

/**
 * Whatever computes gradient sums of a slice of step `step`'s global batch at `params`
 * (`version` changes whenever they do): a GradEngine in this thread, or a GradPool of
 * piscina threads. The Trainer asks its source; it never computes a gradient itself.
 */
export interface GradSource {
  gradSum(params: Float32Array, version: number, step: number, from: number, to: number, sink?: GradSink): GradSum | Promise<GradSum>;
}

export interface ParamSpec {
  /** PyTorch state_dict name, e.g. "conv1.weight". */
  name: string;
  /** Shape in our (tfjs, channels-last) layout. */
  shape: number[];
  /** Offset of the first element in the flat vector. */
  offset: number;
  size: number;
}

/** Which images make up global step `step` and where their randomness comes from. */
export interface StepBatch {
  step: number;
  epoch: number;
  /** Dataset indices of the global batch, in order; shards are contiguous ranges of this. */
  indices: Uint32Array;
}
