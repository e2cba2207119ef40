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
  /** Smallest diffusion time drawn in training, t ~ U(eps, 1). */
  eps: number;
  weighting: Weighting;
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
  model: modelConfig(),
  sde: { ...SDE_DEFAULTS },
  dataset: 'mnist:train',
};

type TrainConfigInput = Partial<Omit<TrainConfig, 'model' | 'sde'>> & {
  model?: Partial<ModelConfig>;
  sde?: SdeConfig;
};

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
  check(cfg.weighting === 'sigma2' || cfg.weighting === 'likelihood', `weighting must be sigma2 or likelihood, got ${cfg.weighting}`);
  return cfg;
}

/** A recorded `dataset` ('train', 'train[:256]', a path with a limit) as the source and limit it was loaded with. */
export function parseDataset(dataset: string): { source: string; limit?: number } {
  const m = /^(.*)\[:(\d+)\]$/.exec(dataset);
  return m ? { source: m[1], limit: Number(m[2]) } : { source: dataset };
}
