/** `scoreflow train`: single-process DSM training with resumable checkpoints. */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { loadImages } from '../core/data/mnist.js';
import { StepLog } from '../core/io/jsonl.js';
import { SDE_DEFAULTS } from '../core/sde.js';
import { CHECKPOINT_EVERY, loadTrainingCheckpoint } from '../core/train/checkpoint.js';
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
import { GradPool } from '../core/train/pool.js';
import { NonFiniteError, trainStep } from '../core/train/step.js';
import { watchStep, WATCH_DEFAULTS } from '../core/eval/watch.js';
import { netScoreModel } from '../core/score/net.js';
import { Trainer } from '../core/train/trainer.js';
import { nativeAdamFor } from '../core/backend/native-adam.js';
import {
  backendOption,
  checkOutputDir,
  deviceOption,
  noteUnverified,
  parseChannels,
  parseFloatArg,
  parseIntArg,
  poolThreads,
  removeStaleTemps,
  startBackend,
} from './common.js';
import { refuseConflicts, trainConflicts } from './resume.js';
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
      '--ema <decay>',
      'EMA decay of the sampling weights (0: none)',
      parseFloatArg({ min: 0, max: 0.999999 }),
      TRAIN_DEFAULTS.emaDecay,
    )
    .option('--grad-clip <norm>', 'clip the global gradient norm (0: off)', parseFloatArg({ min: 0, max: 1e9 }), TRAIN_DEFAULTS.gradClip)
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

/** `scoreflow train` alone: --shards (not a training setting: no checkpoint records it). */
type TrainCommandFlags = TrainFlags & { shards?: number };

async function train(f: TrainCommandFlags, cmd: Command): Promise<void> {
  const ckpt = join(f.out, CHECKPOINT);
  if (f.steps !== undefined && f.epochs !== undefined) throw new Error('give --steps or --epochs, not both');
  if (f.resume && !existsSync(ckpt)) throw new Error(`--resume: no checkpoint at ${ckpt}`);
  if (!f.resume && existsSync(ckpt)) throw new Error(`${ckpt} exists; pass --resume to continue it, or choose another --out`);
  checkOutputDir('--out', f.out);
  checkTrainFlags(f);
  // A resumed run takes its settings, data set included, from the checkpoint (verified as it loads).
  const resumed = f.resume ? loadTrainingCheckpoint(ckpt) : undefined;
  if (resumed) {
    refuseConflicts(`--resume: ${ckpt}`, trainConflicts(cmd, f, resumed.config));
    noteUnverified('train', ckpt, resumed.digest === 'none');
  }
  const dataset = resumed ? parseDataset(resumed.config.dataset) : { source: f.data, limit: f.limit };
  const data = loadImages(dataset.source, { limit: dataset.limit });
  const cfg = resumed?.config ?? configFromFlags(f);
  checkBatchFits(cfg.batchSize, data.n, data.source);
  // Sharded, every gradient is computed on one thread, as a 1-thread worker computes it.
  const backend = await startBackend(f.shards === undefined ? f : { ...f, threads: 1 });
  const trainer = (resumed ? Trainer.fromCheckpoint(resumed, data) : Trainer.create(cfg, data)).setAdam(nativeAdamFor(backend));
  // The run id travels in every checkpoint, so a checkpoint says which run it continues.
  const run = resumed?.run ?? `train-${randomBytes(6).toString('hex')}`;
  const end = targetStep(f, trainer.stepsPerEpoch());
  mkdirSync(f.out, { recursive: true });
  removeStaleTemps('train', f.out);
  // The log holds each step once: lines past the checkpoint (steps a killed run did after it) go.
  const log = new StepLog(join(f.out, 'log.jsonl'));
  log.cut((step) => step <= trainer.step);
  const threads = poolThreads(backend, f.threads, f.shards);
  const pool = await GradPool.create({ threads, shards: f.shards, backend, config: cfg, data });
  trainer.setGradSource(pool);
  process.stderr.write(
    `train: recipe ${cfg.recipe}, ${data.source} (${data.n} images), batch ${cfg.batchSize}, lr ${cfg.lr}, ${trainer.numParams} parameters, ` +
      `steps ${trainer.step} -> ${end}, ${f.shards ? `${f.shards} shards on ` : ''}${threads} pool thread(s), out ${f.out}\n`,
  );
  const bar = progressBar('train', ' | loss {loss} | {ips} img/s');
  bar.start(end, trainer.step, { loss: '-', ips: '-' });
  try {
    while (trainer.step < end) {
      const t0 = performance.now();
      const { epoch } = trainer.batch(trainer.step);
      const { loss, count } = await trainStep(trainer).catch((e: unknown) => {
        throw e instanceof NonFiniteError ? new Error(`${e.message}; stopped, the last good checkpoint is ${ckpt}`) : e;
      });
      const seconds = (performance.now() - t0) / 1000;
      const ips = count / seconds;
      log.append({ step: trainer.step, epoch, loss, images_per_s: ips, seconds, time: new Date().toISOString() });
      bar.update(trainer.step, { loss: loss.toFixed(2), ips: ips.toFixed(1) });
      if (trainer.step % f.ckptEvery === 0 || trainer.step === end) await trainer.saveCheckpoint(ckpt, { backend, run });
      if (f.evalEvery && trainer.step % f.evalEvery === 0) {
        // training waits: the sampling weights of this step, scored in this process
        const model = netScoreModel(cfg.model, cfg.sde, cfg.emaDecay > 0 ? trainer.ema : trainer.params, {
          which: 'ema',
          step: trainer.step,
        });
        try {
          const r = await watchStep(model, trainer.step, f.out, {
            images: f.evalImages,
            samples: f.evalSamples,
            tol: f.evalTol,
          });
          log.note({ step: trainer.step, eval: r, time: new Date().toISOString() });
          bar.stop();
          process.stderr.write(
            `train: eval at step ${trainer.step}: ${r.bpd.toFixed(3)} ± ${r.bpd_stderr.toFixed(3)} bits/dim (${r.bpd_images} test images), ${r.png} (${(r.bpd_seconds + r.sample_seconds).toFixed(1)} s)\n`,
          );
          bar.start(end, trainer.step, { loss: loss.toFixed(2), ips: ips.toFixed(1) });
        } finally {
          model.dispose();
        }
      }
    }
  } finally {
    bar.stop();
    await pool.close();
  }
  process.stderr.write(`train: done at step ${trainer.step}; checkpoint ${ckpt}\n`);
}

/** Cross-flag checks the parsers cannot make alone. */
export function checkTrainFlags(f: Pick<TrainFlags, 'sigmaMin' | 'sigmaMax'>): void {
  if (!(f.sigmaMax > f.sigmaMin)) throw new Error(`--sigma-max ${f.sigmaMax} must be larger than --sigma-min ${f.sigmaMin}`);
}

/** A global batch is drawn without replacement from one epoch: it cannot exceed the data set. */
export function checkBatchFits(batchSize: number, n: number, source: string): void {
  if (batchSize > n) throw new Error(`--batch-size ${batchSize} is larger than the ${n} images of ${source}: use at most ${n}`);
}

export function registerTrain(program: Command): void {
  addTrainingOptions(program.command('train').description('train the ScoreNet with denoising score matching (one process)'))
    .option(
      '--shards <n>',
      "compute each batch as n cluster workers with one thread each do (the coordinator's shards, each on one thread, " +
        'summed in rank order): the same parameters bit for bit; up to --threads shards at a time',
      parseIntArg(1, 1024),
    )
    .action((opts: TrainCommandFlags, cmd: Command) => train(opts, cmd));
}
