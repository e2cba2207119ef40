/**
 * One training step, whoever computes it: the gradient sum over the global batch (from one
 * GradPool, or from the shards of a cluster's workers added by a collective), then
 * `Trainer.apply(sum, count)`. `scoreflow train`, a cluster worker and the bench all hand the
 * sum to the same update (adam.ts adamStep), which takes the mean inside its own loop, one float32
 * division per element, so the update is the same function of the same sum everywhere, and a
 * non-finite sum stops the step before anything is applied.
 */
import { NonFiniteError } from './finite.js';
import type { Trainer } from './trainer.js';

export interface StepResult {
  /** Mean loss over the batch. */
  loss: number;
  count: number;
  /** L2 norm of the batch's mean gradient, before any clipping. */
  gradNorm: number;
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
  const gradNorm = trainer.apply(sum.grad, sum.count, true)!;
  return { loss, count: sum.count, gradNorm };
}
