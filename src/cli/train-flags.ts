/**
 * The training flags that `scoreflow train` and `coordinator start` share: the options, the
 * recipes under them, the run configuration they make, and the check that a resumed run keeps
 * the configuration its checkpoint recorded.
 *
 * Resuming: flags typed on the command line that contradict the recorded configuration are
 * refused, all in one line, rather than silently ignored: the user asked for something the run
 * will not do. Flags left at their defaults, and flags equal to the recorded values, are fine.
 */
import { existsSync, realpathSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { SDE_DEFAULTS } from '../core/sde.js';
import { CHECKPOINT_EVERY } from '../core/train/checkpoint.js';
import {
  LR_DECAYS,
  parseDataset,
  RECIPES,
  recipeValues,
  TRAIN_DEFAULTS,
  trainConfig,
  type RecipeName,
  type TrainConfig,
} from '../core/train/config.js';
import { WATCH_DEFAULTS } from '../core/eval/watch.js';
import { backendOption, deviceOption, parseChannels, parseFloatArg, parseIntArg } from './common.js';

export const CHECKPOINT = 'checkpoint.safetensors';

function parseRecipe(v: string): RecipeName {
  try {
    recipeValues(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  return v as RecipeName;
}

/** Flags that a recipe sets, and the TrainConfig field behind each. */
const RECIPE_FLAGS = {
  batchSize: 'batchSize',
  lr: 'lr',
  lrWarmup: 'lrWarmup',
  lrDecay: 'lrDecay',
  lrDecaySteps: 'lrDecaySteps',
  ema: 'emaDecay',
  gradClip: 'gradClip',
  weighting: 'weighting',
} as const;

/**
 * Before the action runs: every recipe-controlled flag not given on the command line (or in
 * the environment) takes the recipe's value instead of the seed default, so explicit flags
 * override the recipe and `--help` still shows the seed defaults.
 */
function applyRecipe(cmd: Command): void {
  const name = (cmd.getOptionValue('recipe') as RecipeName | undefined) ?? 'seed';
  const values = RECIPES[name];
  for (const [flag, field] of Object.entries(RECIPE_FLAGS)) {
    const v = values[field];
    const source = cmd.getOptionValueSource(flag);
    if (v !== undefined && source !== 'cli' && source !== 'env') cmd.setOptionValueWithSource(flag, v, 'default');
  }
}

/** Training flags shared by `scoreflow train` and `coordinator start`. */
export function addTrainingOptions(cmd: Command): Command {
  return cmd
    .option(
      '--recipe <name>',
      'training preset: seed (the notebook\'s), fast or likelihood (README: "Training recipes"); explicit flags override it',
      parseRecipe,
      'seed',
    )
    .hook('preAction', (c) => applyRecipe(c))
    .option('--steps <n>', 'train until this many steps in total (counting resumed ones)', parseIntArg(1, 1e9))
    .option('--epochs <n>', 'train until this many epochs in total', parseIntArg(1, 1e6))
    .option('--seed <s>', 'seed of every random stream', parseIntArg(0), TRAIN_DEFAULTS.seed)
    .option('--batch-size <b>', 'global batch size (at most the data set size)', parseIntArg(1), TRAIN_DEFAULTS.batchSize)
    .option('--lr <lr>', 'Adam learning rate, in (0, 1]', parseFloatArg({ exclusiveMin: 0, max: 1 }), TRAIN_DEFAULTS.lr)
    .option(
      '--lr-warmup <steps>',
      'linear learning-rate warm-up over this many steps (0: none)',
      parseIntArg(0, 1e9),
      TRAIN_DEFAULTS.lrWarmup,
    )
    .addOption(
      new Option('--lr-decay <rule>', 'learning-rate decay after the warm-up: rsqrt (x sqrt(D/k) from step D) or cosine (to 0 at step D)')
        .choices(LR_DECAYS)
        .default(TRAIN_DEFAULTS.lrDecay),
    )
    .option('--lr-decay-steps <D>', 'the step D of --lr-decay', parseIntArg(0, 1e9), TRAIN_DEFAULTS.lrDecaySteps)
    .option(
      '--lr-cooldown <N>',
      "scale the rate linearly down to 0 over the run's last N steps (0: none); scoreflow train --resume may add one that starts at or after the checkpoint's step",
      parseIntArg(0, 1e9),
      TRAIN_DEFAULTS.lrCooldownSteps,
    )
    .option(
      '--ema <decay>',
      'EMA decay of the sampling weights (0: none)',
      parseFloatArg({ min: 0, max: 0.999999 }),
      TRAIN_DEFAULTS.emaDecay,
    )
    .option(
      '--grad-clip <norm>',
      "clip the L2 norm of the batch's mean gradient to this (0: off; scoreflow train logs it as grad_norm)",
      parseFloatArg({ min: 0, max: 1e9 }),
      TRAIN_DEFAULTS.gradClip,
    )
    .addOption(
      new Option('--weighting <w>', 'DSM weighting lambda(t)').choices(['sigma2', 'likelihood', 'edm']).default(TRAIN_DEFAULTS.weighting),
    )
    .addOption(new Option('--sde <name>', 'forward SDE').choices(['ve', 'vp', 'subvp']).default(SDE_DEFAULTS.name))
    .option('--sigma-min <s>', 'VE sigma_min, in (0, 1]', parseFloatArg({ exclusiveMin: 0, max: 1 }), SDE_DEFAULTS.sigmaMin)
    .option(
      '--sigma-max <s>',
      'VE sigma_max, above sigma_min and at most 1e4',
      parseFloatArg({ exclusiveMin: 0, max: 1e4 }),
      SDE_DEFAULTS.sigmaMax,
    )
    .option('--channels <c>', 'ScoreNet channels, four comma-separated', parseChannels)
    .option('--embed-dim <d>', 'time embedding width (even)', parseIntArg(2, 4096))
    .option('--data <source>', 'train | test | fashion-train | path to an IDX/.npy image file', 'train')
    .option('--limit <n>', 'use only the first n images', parseIntArg(1))
    .addOption(backendOption())
    .addOption(deviceOption())
    .option(
      '--threads <t>',
      'compute threads (default: the cores this process may use: its affinity, capped by its cgroup CPU limit): GradPool threads on wasm/cpu, intra-op threads on torch',
      parseIntArg(1, 1024),
    )
    .option('--out <dir>', 'output directory (checkpoint, log.jsonl)', 'runs/train')
    .option('--resume', 'continue from <out>/checkpoint.safetensors', false)
    .option('--ckpt-every <n>', 'write a checkpoint every n steps', parseIntArg(1, 1e9), CHECKPOINT_EVERY)
    .option(
      '--eval-every <n>',
      'every n steps: bits/dim of the first --eval-images test images and a grid of --eval-samples Heun samples (seed 0) under <out>/eval/ (0: never)',
      parseIntArg(0, 1e9),
      0,
    )
    .option('--eval-images <n>', 'test images for --eval-every bits/dim', parseIntArg(1, 10_000), WATCH_DEFAULTS.images)
    .option('--eval-samples <n>', 'Heun samples in the --eval-every grid', parseIntArg(1, 10_000), WATCH_DEFAULTS.samples)
    .option(
      '--eval-tol <r>',
      'RK45 rtol = atol of the --eval-every bits/dim',
      parseFloatArg({ exclusiveMin: 0, max: 1 }),
      WATCH_DEFAULTS.tol,
    );
}

export interface TrainFlags {
  recipe?: RecipeName;
  steps?: number;
  epochs?: number;
  seed: number;
  batchSize: number;
  lr: number;
  lrWarmup: number;
  lrDecay: TrainConfig['lrDecay'];
  lrDecaySteps: number;
  lrCooldown: number;
  ema: number;
  gradClip: number;
  weighting: 'sigma2' | 'likelihood' | 'edm';
  sde: 've' | 'vp' | 'subvp';
  sigmaMin: number;
  sigmaMax: number;
  channels?: [number, number, number, number];
  embedDim?: number;
  data: string;
  limit?: number;
  backend: string;
  device?: string;
  threads?: number;
  out: string;
  resume: boolean;
  ckptEvery: number;
  evalEvery?: number;
  evalImages?: number;
  evalSamples?: number;
  evalTol?: number;
}

/** The run's config: the recipe's values (seed: none), then the flags (which applyRecipe filled from the recipe where not given). */
export function configFromFlags(f: TrainFlags): TrainConfig {
  const recipe = recipeValues(f.recipe ?? 'seed');
  return trainConfig({
    ...recipe,
    seed: f.seed,
    batchSize: f.batchSize,
    lr: f.lr,
    lrWarmup: f.lrWarmup,
    lrDecay: f.lrDecay,
    lrDecaySteps: f.lrDecaySteps,
    emaDecay: f.ema,
    gradClip: f.gradClip,
    weighting: f.weighting,
    model: { ...recipe.model, channels: f.channels, embedDim: f.embedDim },
    sde: { name: f.sde, sigmaMin: f.sigmaMin, sigmaMax: f.sigmaMax },
    dataset: f.limit ? `${f.data}[:${f.limit}]` : f.data,
  });
}

/** The step to stop at: --steps, or --epochs whole epochs. */
export function targetStep(f: Pick<TrainFlags, 'steps' | 'epochs'>, stepsPerEpoch: number): number {
  if (f.steps !== undefined && f.epochs !== undefined) throw new Error('give --steps or --epochs, not both');
  if (f.steps !== undefined) return f.steps;
  return (f.epochs ?? 1) * stepsPerEpoch;
}

/**
 * The config with the run's cool-down, for a run that ends at step `end`: --lr-cooldown N ends it
 * there (it starts at end - N). A resumed run (`done`: its checkpoint's step) keeps the recorded
 * cool-down unless the flag is given; a different one is taken only where neither has touched an
 * update already made (both start at or after `done`), so the run still makes exactly the updates
 * of a straight run with the new one. One line otherwise.
 */
export function withCooldown(cmd: Command, f: Pick<TrainFlags, 'lrCooldown'>, cfg: TrainConfig, end: number, done?: number): TrainConfig {
  const stop = cfg.lrCooldownStart + cfg.lrCooldownSteps;
  if (done !== undefined && cmd.getOptionValueSource('lrCooldown') !== 'cli') {
    if (cfg.lrCooldownSteps > 0 && end > stop)
      throw new Error(
        `the run's learning-rate cool-down ends at step ${stop}, where the rate is 0: steps ${stop} to ${end} would change nothing; ` +
          `give --lr-cooldown to end it at step ${end}${cfg.lrCooldownStart < done ? ' (not possible here: it started before this checkpoint)' : ''}`,
      );
    return cfg;
  }
  const n = f.lrCooldown;
  if (n > end) throw new Error(`--lr-cooldown ${n} is longer than the run's ${end} steps`);
  const next = { ...cfg, lrCooldownStart: n > 0 ? end - n : 0, lrCooldownSteps: n };
  if (done === undefined || (next.lrCooldownStart === cfg.lrCooldownStart && n === cfg.lrCooldownSteps)) return next;
  if (cfg.lrCooldownSteps > 0 && cfg.lrCooldownStart < done)
    throw new Error(
      `--lr-cooldown ${n}: the checkpoint's cool-down (${cfg.lrCooldownSteps} steps from step ${cfg.lrCooldownStart}) began before its step ${done} ` +
        `and cannot change; drop the flag${end > stop ? ` and train to step ${stop} at most` : ''}`,
    );
  if (n > 0 && next.lrCooldownStart < done)
    throw new Error(
      `--lr-cooldown ${n} would start at step ${next.lrCooldownStart}, before the checkpoint's step ${done}: ` +
        `a resumed run cannot change updates already made; give at most ${end - done}`,
    );
  return next;
}

/** Cross-flag checks the parsers cannot make alone. */
export function checkTrainFlags(f: Pick<TrainFlags, 'sigmaMin' | 'sigmaMax'>): void {
  if (!(f.sigmaMax > f.sigmaMin)) throw new Error(`--sigma-max ${f.sigmaMax} must be larger than --sigma-min ${f.sigmaMin}`);
}

/** A global batch is drawn without replacement from one epoch: it cannot exceed the data set. */
export function checkBatchFits(batchSize: number, n: number, source: string): void {
  if (batchSize > n) throw new Error(`--batch-size ${batchSize} is larger than the ${n} images of ${source}: use at most ${n}`);
}

// ---- resuming: the flags a checkpoint records, and the one line that refuses a contradiction

type Key = keyof TrainFlags;

/** The training flags that are part of a run's config, with where the config keeps each. */
const RECORDED: [Key, string, (c: TrainConfig) => unknown][] = [
  ['seed', '--seed', (c) => c.seed],
  ['batchSize', '--batch-size', (c) => c.batchSize],
  ['lr', '--lr', (c) => c.lr],
  ['lrWarmup', '--lr-warmup', (c) => c.lrWarmup],
  ['lrDecay', '--lr-decay', (c) => c.lrDecay],
  ['lrDecaySteps', '--lr-decay-steps', (c) => c.lrDecaySteps],
  ['lrCooldown', '--lr-cooldown', (c) => c.lrCooldownSteps],
  ['ema', '--ema', (c) => c.emaDecay],
  ['gradClip', '--grad-clip', (c) => c.gradClip],
  ['weighting', '--weighting', (c) => c.weighting],
  ['sde', '--sde', (c) => c.sde.name],
  ['sigmaMin', '--sigma-min', (c) => c.sde.sigmaMin],
  ['sigmaMax', '--sigma-max', (c) => c.sde.sigmaMax],
  ['channels', '--channels', (c) => c.model.channels.join(',')],
  ['embedDim', '--embed-dim', (c) => c.model.embedDim],
  ['data', '--data', (c) => parseDataset(c.dataset).source],
  ['limit', '--limit', (c) => parseDataset(c.dataset).limit ?? 'none (all images)'],
];

function sameData(a: string, b: string): boolean {
  if (a === b) return true;
  try {
    return existsSync(a) && existsSync(b) && realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

/** "--lr 0.01 (the checkpoint has 0.0001)" for each flag given on the command line that contradicts `cfg`. */
export function trainConflicts(cmd: Command, f: TrainFlags, cfg: TrainConfig, holder = 'the checkpoint', except: Key[] = []): string[] {
  const out: string[] = [];
  for (const [key, flag, get] of RECORDED) {
    if (cmd.getOptionValueSource(key) !== 'cli' || except.includes(key)) continue;
    const given = key === 'channels' ? f.channels!.join(',') : f[key];
    const has = get(cfg);
    const same = key === 'data' ? sameData(String(given), String(has)) : given === has;
    if (!same) out.push(`${flag} ${given} (${holder} has ${has})`);
  }
  return out;
}

/** For a synthetic run (the hidden test objective): only the batch size is a flag of it. */
export function syntheticConflicts(cmd: Command, f: TrainFlags, batchSize: number, holder = 'the checkpoint'): string[] {
  return cmd.getOptionValueSource('batchSize') === 'cli' && f.batchSize !== batchSize
    ? [`--batch-size ${f.batchSize} (${holder} has ${batchSize})`]
    : [];
}

/** Throws the one line listing every conflict, if any. */
export function refuseConflicts(what: string, conflicts: string[]): void {
  if (!conflicts.length) return;
  throw new Error(
    `${what} was made with other settings than these flags: ${conflicts.join(', ')}; ` +
      'a resumed run keeps the settings it was started with: drop these flags, or start a new run in another --out',
  );
}
