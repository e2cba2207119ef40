import { type ModelConfig, modelConfig } from '../model/config.js';
import type { Weighting } from '../loss.js';
import { SDE_DEFAULTS, type SdeConfig } from '../sde.js';

/** Everything that determines a training run's numbers (with the data set). */
export interface TrainConfig {
  seed: number;
  /** Global batch size. */
  batchSize: number;
  lr: number;
  beta1: number;
  beta2: number;
  adamEps: number;
  /** EMA decay of the weights used for sampling; 0 disables. */
  emaDecay: number;
  /** Clip the global gradient norm to this; 0 = off. */
  gradClip: number;
  /** Smallest diffusion time drawn in training (t ~ U(eps, 1), or the lognormal draw clipped to [eps, 1]). */
  eps: number;
  weighting: Weighting;
  /** The preset these values started from ('seed' or 'fast', see RECIPES); recorded, not interpreted. */
  recipe: RecipeName;
  /**
   * How t is drawn: 'uniform' U(eps, 1), 'lognormal' (EDM: ln sigma ~ N(pMean, pStd^2), VE only), or
   * 'likelihood' (importance sampling p(t) ~ g^2/std^2 for the likelihood weighting, VE only); see noise.ts.
   */
  noise: 'uniform' | 'lognormal' | 'likelihood';
  pMean: number;
  pStd: number;
  /** sigma_data of the 'edm' weighting (the data's standard deviation; MNIST in [0, 1]: 0.31). */
  sigmaData: number;
  /** Learning-rate schedule (schedule.ts lrAt): linear warm-up over lrWarmup steps, then lrDecay with scale lrDecaySteps. */
  lrWarmup: number;
  lrDecay: (typeof LR_DECAYS)[number];
  lrDecaySteps: number;
  /**
   * A linear cool-down to 0 on top of the schedule: the updates from lrCooldownStart on are scaled
   * by (start + steps - k) / steps, reaching 0 at start + steps (lrCooldownSteps 0: none). The
   * training commands set it to end at the run's last step (--lr-cooldown).
   */
  lrCooldownStart: number;
  lrCooldownSteps: number;
  model: ModelConfig;
  sde: Required<SdeConfig>;
  /** Where the images come from ('mnist:train', or a path); recorded, not interpreted here. */
  dataset: string;
}

export const TRAIN_DEFAULTS: TrainConfig = {
  seed: 0,
  batchSize: 32,
  lr: 1e-4,
  beta1: 0.9,
  beta2: 0.999,
  adamEps: 1e-8,
  emaDecay: 0.999,
  gradClip: 0,
  eps: 1e-3,
  weighting: 'sigma2',
  recipe: 'seed',
  noise: 'uniform',
  pMean: -1.2,
  pStd: 1.2,
  sigmaData: 0.31,
  lrWarmup: 0,
  lrDecay: 'constant',
  lrDecaySteps: 0,
  lrCooldownStart: 0,
  lrCooldownSteps: 0,
  model: modelConfig(),
  sde: { ...SDE_DEFAULTS },
  dataset: 'mnist:train',
};

export type TrainConfigInput = Partial<Omit<TrainConfig, 'model' | 'sde'>> & {
  model?: Partial<ModelConfig>;
  sde?: SdeConfig;
};

/** The learning-rate decays after the warm-up (schedule.ts lrAt). */
export const LR_DECAYS = ['constant', 'rsqrt', 'cosine'] as const;

export type RecipeName = 'seed' | 'fast' | 'likelihood';

/**
 * Named presets of TrainConfig values. `seed` is TRAIN_DEFAULTS (the notebook's recipe). `fast`
 * (README, "Training recipes"): EDM's log-normal noise levels with their loss weight, a 4x larger
 * batch at a 20x larger peak learning rate with warm-up and a horizon-free 1/sqrt decay.
 * `likelihood`: the likelihood weighting lambda = g^2 with importance-sampled t (noise.ts), on fast's
 * schedule shape and preconditioning, at the batch and peak rate a sweep favoured (README, "Tuning
 * the likelihood recipe": batch 60 at 4e-3 against fast's 120 at 2e-3), with the mean gradient's
 * norm clipped at 1e3, below every norm measured in training (2,100 and up; medians 7,000-13,000), so each
 * step's gradient is rescaled to that norm: importance-sampled t makes rare bursts of 10-200x, and
 * clipping at 1e3 or 3e3 beat 1e4 (about the median) by 0.03 bits/dim at 10 epochs (README).
 * Explicit command-line flags override a recipe's values; the result is what the checkpoint records.
 */
export const RECIPES: Record<RecipeName, TrainConfigInput> = {
  seed: {},
  fast: {
    recipe: 'fast',
    batchSize: 120,
    lr: 2e-3,
    lrWarmup: 200,
    lrDecay: 'rsqrt',
    lrDecaySteps: 400,
    noise: 'lognormal',
    pMean: -1.2,
    pStd: 1.2,
    weighting: 'edm',
    sigmaData: 0.31,
    model: { precond: 'edm', sigmaData: 0.31 },
  },
  likelihood: {
    recipe: 'likelihood',
    batchSize: 60,
    lr: 4e-3,
    lrWarmup: 200,
    lrDecay: 'rsqrt',
    lrDecaySteps: 400,
    gradClip: 1e3,
    noise: 'likelihood',
    weighting: 'likelihood',
    model: { precond: 'edm', sigmaData: 0.31 },
  },
};

const recipeNames = () =>
  Object.keys(RECIPES)
    .join(', ')
    .replace(/, ([^,]*)$/, ' or $1');

/** The recipe's values over the defaults; one-line error for an unknown name. */
export function recipeValues(name: string): TrainConfigInput {
  if (!Object.hasOwn(RECIPES, name)) throw new Error(`unknown recipe '${name}' (expected ${recipeNames()})`);
  return { ...RECIPES[name as RecipeName] };
}

/** Fill defaults and validate, with one-line errors. */
export function trainConfig(input: TrainConfigInput = {}): TrainConfig {
  const defined = Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined));
  const cfg: TrainConfig = {
    ...TRAIN_DEFAULTS,
    ...defined,
    model: modelConfig(input.model ?? {}),
    sde: { ...SDE_DEFAULTS, ...(input.sde ?? {}) } as Required<SdeConfig>,
  };
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new Error(what);
  };
  check(Number.isSafeInteger(cfg.seed) && cfg.seed >= 0, `seed must be a non-negative integer, got ${cfg.seed}`);
  check(Number.isInteger(cfg.batchSize) && cfg.batchSize >= 1, `batch size must be a positive integer, got ${cfg.batchSize}`);
  check(cfg.lr > 0 && Number.isFinite(cfg.lr), `learning rate must be positive, got ${cfg.lr}`);
  check(cfg.emaDecay >= 0 && cfg.emaDecay < 1, `EMA decay must be in [0, 1), got ${cfg.emaDecay}`);
  check(cfg.gradClip >= 0, `gradient clip must be >= 0, got ${cfg.gradClip}`);
  check(cfg.eps > 0 && cfg.eps < 1, `eps must be in (0, 1), got ${cfg.eps}`);
  check(['sigma2', 'likelihood', 'edm'].includes(cfg.weighting), `weighting must be sigma2, likelihood or edm, got ${cfg.weighting}`);
  check(Object.hasOwn(RECIPES, cfg.recipe), `unknown recipe '${cfg.recipe}' (expected ${recipeNames()})`);
  check(['uniform', 'lognormal', 'likelihood'].includes(cfg.noise), `noise must be uniform, lognormal or likelihood, got ${cfg.noise}`);
  check(
    cfg.noise !== 'likelihood' || cfg.weighting === 'likelihood',
    `likelihood noise is importance sampling for the likelihood weighting, got weighting ${cfg.weighting}`,
  );
  check(
    Number.isFinite(cfg.pMean) && cfg.pStd > 0 && Number.isFinite(cfg.pStd),
    `lognormal noise needs finite P_mean and P_std > 0, got ${cfg.pMean}, ${cfg.pStd}`,
  );
  check(cfg.sigmaData > 0 && Number.isFinite(cfg.sigmaData), `sigma_data must be positive, got ${cfg.sigmaData}`);
  // both are written for the VE SDE (x(t) = x(0) + std(t) z, sigma(t) inverted in closed form)
  check(
    cfg.sde.name === 've' || (cfg.noise === 'uniform' && cfg.weighting !== 'edm' && cfg.model.precond === 'std'),
    `lognormal and likelihood noise, edm weighting and edm preconditioning need the VE SDE, got ${cfg.sde.name}`,
  );
  check(Number.isInteger(cfg.lrWarmup) && cfg.lrWarmup >= 0, `lr warm-up must be a non-negative integer of steps, got ${cfg.lrWarmup}`);
  check(LR_DECAYS.includes(cfg.lrDecay), `lr decay must be constant, rsqrt or cosine, got ${cfg.lrDecay}`);
  check(
    cfg.lrDecay === 'constant' || (Number.isInteger(cfg.lrDecaySteps) && cfg.lrDecaySteps >= 1),
    `lr decay ${cfg.lrDecay} needs lrDecaySteps (--lr-decay-steps) >= 1, got ${cfg.lrDecaySteps}`,
  );
  check(
    [cfg.lrCooldownStart, cfg.lrCooldownSteps].every((n) => Number.isInteger(n) && n >= 0),
    `lr cool-down start and steps must be non-negative integers, got ${cfg.lrCooldownStart} and ${cfg.lrCooldownSteps}`,
  );
  return cfg;
}

/** A recorded `dataset` ('train', 'train[:256]', a path with a limit) as the source and limit it was loaded with. */
export function parseDataset(dataset: string): { source: string; limit?: number } {
  const m = /^(.*)\[:(\d+)\]$/.exec(dataset);
  return m ? { source: m[1], limit: Number(m[2]) } : { source: dataset };
}
