/**
 * The learning-rate schedule of a recipe: a plain function of (config, step), so a resumed run and
 * every replica agree on the rate of each update.
 */
import type { TrainConfig } from './config.js';

/** The fields of a TrainConfig that make the schedule (all but lr optional: none, a constant rate). */
export type LrConfig = Partial<Pick<TrainConfig, 'lrWarmup' | 'lrDecay' | 'lrDecaySteps' | 'lrCooldownStart' | 'lrCooldownSteps'>> &
  Pick<TrainConfig, 'lr'>;

/**
 * The learning rate of the update that follows `done` updates (0 for the first):
 *   lr * w(done) * d(done) * c(done),  w = min(1, (done + 1) / W) (linear warm-up over W steps; W = 0: none),
 *   d = 1 (constant), sqrt(D / max(done, D)) (rsqrt: EDM2's horizon-free decay after D steps), or
 *   (1 + cos(pi min(done, D) / D)) / 2 (cosine to 0 at step D),
 *   c = clamp((S + N - done) / N, 0, 1) (a linear cool-down to 0 over the N updates from step S, as
 *       warm-up-stable-decay schedules end; N = 0: none).
 * With no warm-up, decay or cool-down it returns cfg.lr itself, so the seed recipe's updates are unchanged.
 */
export function lrAt(cfg: LrConfig, done: number): number {
  const warm = cfg.lrWarmup ?? 0;
  const decay = cfg.lrDecay ?? 'constant';
  const N = cfg.lrCooldownSteps ?? 0;
  if (warm === 0 && decay === 'constant' && N === 0) return cfg.lr;
  const w = warm > 0 ? Math.min(1, (done + 1) / warm) : 1;
  const D = cfg.lrDecaySteps ?? 0;
  let d = 1;
  if (decay === 'rsqrt') d = Math.sqrt(D / Math.max(done, D));
  else if (decay === 'cosine') d = (1 + Math.cos((Math.PI * Math.min(done, D)) / D)) / 2;
  const c = N > 0 ? Math.min(1, Math.max(0, ((cfg.lrCooldownStart ?? 0) + N - done) / N)) : 1;
  return cfg.lr * w * d * c;
}
