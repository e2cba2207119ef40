/** `scoreflow train`: single-process DSM training with resumable checkpoints. */
import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { loadImages } from '../core/data/mnist.js';
import { RECIPES, recipeValues, trainConfig, type RecipeName, type TrainConfig } from '../core/train/config.js';
import { GradPool } from '../core/train/pool.js';
import { NonFiniteError, trainStep } from '../core/train/step.js';
import { Trainer } from '../core/train/trainer.js';
import { backendOption, deviceOption, parseChannels, parseFloatArg, parseIntArg, poolThreads, startBackend } from './common.js';
import { progressBar } from './progress.js';

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
const RECIPE_FLAGS = { batchSize: 'batchSize', lr: 'lr', ema: 'emaDecay', gradClip: 'gradClip', weighting: 'weighting' } as const;

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
    .option('--recipe <name>', 'training preset: seed (the notebook\'s) or fast (README: "Training recipes"); explicit flags override it', parseRecipe, 'seed')
    .hook('preAction', (c) => applyRecipe(c))
    .option('--steps <n>', 'train until this many steps in total (counting resumed ones)', parseIntArg(1))
    .option('--epochs <n>', 'train until this many epochs in total', parseIntArg(1))
    .option('--seed <s>', 'seed of every random stream', parseIntArg(0), 0)
    .option('--batch-size <b>', 'global batch size', parseIntArg(1), 32)
    .option('--lr <lr>', 'Adam learning rate', parseFloatArg({ exclusiveMin: 0 }), 1e-4)
    .option('--ema <decay>', 'EMA decay of the sampling weights (0: none)', parseFloatArg({ min: 0, max: 0.999999 }), 0.999)
    .option('--grad-clip <norm>', 'clip the global gradient norm (0: off)', parseFloatArg({ min: 0 }), 0)
    .addOption(new Option('--weighting <w>', 'DSM weighting lambda(t)').choices(['sigma2', 'likelihood', 'edm']).default('sigma2'))
    .addOption(new Option('--sde <name>', 'forward SDE').choices(['ve', 'vp', 'subvp']).default('ve'))
    .option('--sigma-min <s>', 'VE sigma_min', parseFloatArg({ exclusiveMin: 0 }), 0.01)
    .option('--sigma-max <s>', 'VE sigma_max', parseFloatArg({ exclusiveMin: 0 }), 22)
    .option('--channels <c>', 'ScoreNet channels, four comma-separated', parseChannels)
    .option('--embed-dim <d>', 'time embedding width', parseIntArg(2))
    .option('--data <source>', 'train | test | fashion-train | path to an IDX/.npy image file', 'train')
    .option('--limit <n>', 'use only the first n images', parseIntArg(1))
    .addOption(backendOption())
    .addOption(deviceOption())
    .option('--threads <t>', 'compute threads (default: all cores): GradPool threads on wasm/cpu, intra-op threads on torch', parseIntArg(1))
    .option('--out <dir>', 'output directory (checkpoint, log.jsonl)', 'runs/train')
    .option('--resume', 'continue from <out>/checkpoint.safetensors', false)
    .option('--ckpt-every <n>', 'write a checkpoint every n steps', parseIntArg(1), 200);
}

export interface TrainFlags {
  recipe?: RecipeName;
  steps?: number;
  epochs?: number;
  seed: number;
  batchSize: number;
  lr: number;
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
}

/** The run's config: the recipe's values (seed: none), then the flags (which applyRecipe filled from the recipe where not given). */
export function configFromFlags(f: TrainFlags): TrainConfig {
  const recipe = recipeValues(f.recipe ?? 'seed');
  return trainConfig({
    ...recipe,
    seed: f.seed,
    batchSize: f.batchSize,
    lr: f.lr,
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

async function train(f: TrainFlags): Promise<void> {
  const ckpt = join(f.out, CHECKPOINT);
  if (f.resume && !existsSync(ckpt)) throw new Error(`--resume: no checkpoint at ${ckpt}`);
  if (!f.resume && existsSync(ckpt)) throw new Error(`${ckpt} exists; pass --resume to continue it, or choose another --out`);
  const data = loadImages(f.data, { limit: f.limit });
  const backend = await startBackend(f);
  const trainer = f.resume ? Trainer.load(ckpt, data) : Trainer.create(configFromFlags(f), data);
  const cfg = trainer.config;
  const end = targetStep(f, trainer.stepsPerEpoch());
  mkdirSync(f.out, { recursive: true });
  const threads = poolThreads(backend, f.threads);
  const pool = await GradPool.create({ threads, backend, config: cfg, data });
  trainer.setGradSource(pool);
  process.stderr.write(
    `train: recipe ${cfg.recipe}, ${data.source} (${data.n} images), batch ${cfg.batchSize}, lr ${cfg.lr}, ${trainer.numParams} parameters, ` +
      `steps ${trainer.step} -> ${end}, ${threads} pool thread(s), out ${f.out}\n`,
  );
  const bar = progressBar('train', ' | loss {loss} | {ips} img/s');
  bar.start(end, trainer.step, { loss: '-', ips: '-' });
  const log = join(f.out, 'log.jsonl');
  try {
    while (trainer.step < end) {
      const t0 = performance.now();
      const { epoch } = trainer.batch(trainer.step);
      const { loss, count } = await trainStep(trainer).catch((e: unknown) => {
        throw e instanceof NonFiniteError ? new Error(`${e.message}; stopped, the last good checkpoint is ${ckpt}`) : e;
      });
      const seconds = (performance.now() - t0) / 1000;
      const ips = count / seconds;
      appendFileSync(log, JSON.stringify({ step: trainer.step, epoch, loss, images_per_s: ips, seconds, time: new Date().toISOString() }) + '\n');
      bar.update(trainer.step, { loss: loss.toFixed(2), ips: ips.toFixed(1) });
      if (trainer.step % f.ckptEvery === 0 || trainer.step === end) await trainer.saveCheckpoint(ckpt, { backend });
    }
  } finally {
    bar.stop();
    await pool.close();
  }
  process.stderr.write(`train: done at step ${trainer.step}; checkpoint ${ckpt}\n`);
}

export function registerTrain(program: Command): void {
  addTrainingOptions(program.command('train').description('train the ScoreNet with denoising score matching (one process)')).action(
    (opts: TrainFlags) => train(opts),
  );
}
