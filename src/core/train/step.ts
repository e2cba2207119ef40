/**
 * One training step, whoever computes it: the gradient sum over the global batch (from one
 * GradPool, or from the shards of a cluster's workers added by a collective), then
 * `meanGradient`, then `Trainer.apply`. `scoreflow train`, a cluster worker and the bench
 * all go through `meanGradient`, so the update they apply is the same function of the
 * same sum: the mean is one float32 division per element, and a non-finite sum stops the
 * step before anything is applied.
 */
import type { Trainer } from './trainer.js';

export class NonFiniteError extends Error {}

export function allFinite(v: Float32Array, from = 0, n = v.length - from): boolean {
  // x * 0 is ±0 for finite x and NaN for NaN/Inf, so the sum is 0 iff all are finite: no
  // branch per element (about twice as fast as testing each one).
  let s = 0;
  for (let i = from, end = from + n; i < end; i++) s += v[i] * 0;
  return s === 0;
}

/**
 * The mean over the global batch of a gradient sum, in place: grad[i] / count rounded once
 * to float32 (so the same sum gives the same bits on every replica). Throws NonFiniteError,
 * changing nothing, when any element is NaN or infinite.
 */
export function meanGradient(sum: Float32Array, count: number): Float32Array {
  if (!allFinite(sum)) throw new NonFiniteError('the gradient has NaN or infinite values');
  for (let i = 0, n = sum.length; i < n; i++) sum[i] /= count;
  return sum;
}

export interface StepResult {
  /** Mean loss over the batch. */
  loss: number;
  count: number;
}

/**
 * A whole step on one process: the batch's gradient sum, its mean, the update. Throws
 * NonFiniteError (nothing applied) on a NaN or infinite loss or gradient.
 */
export async function trainStep(trainer: Trainer): Promise<StepResult> {
  const step = trainer.step;
  const sum = await trainer.gradSum(step, 0, trainer.batch(step).indices.length);
  const loss = sum.lossSum / sum.count;
  if (!Number.isFinite(loss)) throw new NonFiniteError(`loss is ${loss} at step ${step}`);
  trainer.apply(meanGradient(sum.grad, sum.count));
  return { loss, count: sum.count };
}
