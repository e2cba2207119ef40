/** ScoreNet hyper-parameters; the defaults are the reference notebook's. */
export interface ModelConfig {
  /** Channels of the four resolution levels. */
  channels: [number, number, number, number];
  /** Width of the Gaussian Fourier time embedding. */
  embedDim: number;
  /** Scale of the fixed random Fourier frequencies. */
  fourierScale: number;
  /** Image height, width (single channel). */
  height: number;
  width: number;
  /**
   * How the network's output F becomes a score. 'std' (the reference): s = F / std(t), F predicts -z.
   * 'edm' (Karras et al. 2022, sec. 5, VE only): the denoiser D = c_skip x + c_out F with
   * c_skip = sd^2/(std^2 + sd^2), c_out = std sd / sqrt(std^2 + sd^2), read as a score by Tweedie,
   * s = (D - x)/std^2 = -x/(std^2 + sd^2) + sd F / (std sqrt(std^2 + sd^2)), sd = sigmaData.
   */
  precond: 'std' | 'edm';
  /** sigma_data of the 'edm' preconditioning. */
  sigmaData: number;
}

export const MODEL_DEFAULTS: ModelConfig = {
  channels: [32, 64, 128, 256],
  embedDim: 256,
  fourierScale: 8,
  height: 28,
  width: 28,
  precond: 'std',
  sigmaData: 0.31,
};

export function modelConfig(partial: Partial<ModelConfig> = {}): ModelConfig {
  const cfg = { ...MODEL_DEFAULTS, ...Object.fromEntries(Object.entries(partial).filter(([, v]) => v !== undefined)) };
  if (cfg.channels.length !== 4 || cfg.channels.some((c) => !Number.isInteger(c) || c < 1)) {
    throw new Error(`model channels must be 4 positive integers, got [${cfg.channels.join(',')}]`);
  }
  if (!Number.isInteger(cfg.embedDim) || cfg.embedDim < 2 || cfg.embedDim % 2 !== 0) {
    throw new Error(`model embed dim must be an even integer >= 2, got ${cfg.embedDim}`);
  }
  if (cfg.height !== 28 || cfg.width !== 28) {
    // The strides and output_padding of the reference U-Net are fixed for 28x28 inputs.
    throw new Error(`ScoreNet is built for 28x28 images, got ${cfg.height}x${cfg.width}`);
  }
  if (cfg.precond !== 'std' && cfg.precond !== 'edm')
    throw new Error(`model preconditioning must be std or edm, got ${String(cfg.precond)}`);
  if (!(cfg.sigmaData > 0 && Number.isFinite(cfg.sigmaData))) throw new Error(`model sigma_data must be positive, got ${cfg.sigmaData}`);
  groupsFor(cfg); // validates divisibility
  return cfg;
}

/**
 * GroupNorm group counts, in forward order: 4 for the first level, 32 after, as the reference.
 * Narrow configurations (fewer than 32 channels) use one channel per group.
 */
export function groupsFor(cfg: ModelConfig): Record<string, { groups: number; channels: number }> {
  const [c0, c1, c2, c3] = cfg.channels;
  const g = (groups: number, channels: number, name: string) => {
    const n = Math.min(groups, channels);
    if (channels % n !== 0) throw new Error(`${name}: ${channels} channels do not split into ${n} groups`);
    return { groups: n, channels };
  };
  return {
    gnorm1: g(4, c0, 'gnorm1'),
    gnorm2: g(32, c1, 'gnorm2'),
    gnorm3: g(32, c2, 'gnorm3'),
    gnorm4: g(32, c3, 'gnorm4'),
    tgnorm4: g(32, c2, 'tgnorm4'),
    tgnorm3: g(32, c1, 'tgnorm3'),
    tgnorm2: g(32, c0, 'tgnorm2'),
  };
}
