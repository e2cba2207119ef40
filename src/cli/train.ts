/** `scoreflow train`: single-process DSM training with resumable checkpoints. */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { stepsPerEpoch } from '../core/data/batches.js';
import { loadImages } from '../core/data/mnist.js';
import { StepLog } from '../core/io/jsonl.js';
import { loadTrainingCheckpoint } from '../core/train/checkpoint.js';
import { parseDataset } from '../core/train/config.js';
import { GradPool } from '../core/train/pool.js';
import { NonFiniteError } from '../core/train/finite.js';
import { trainStep } from '../core/train/step.js';
import { watchStep } from '../core/eval/watch.js';
import { netScoreModel } from '../core/score/net.js';
import { Trainer } from '../core/train/trainer.js';
import { nativeAdamFor } from '../core/backend/native-adam.js';
import { checkOutputDir, noteUnverified, parseIntArg, poolThreads, removeStaleTemps, startBackend } from './common.js';
import { progressBar } from './progress.js';
import {
  addTrainingOptions,
  CHECKPOINT,
  checkBatchFits,
  checkTrainFlags,
  configFromFlags,
  refuseConflicts,
  targetStep,
  trainConflicts,
  type TrainFlags,
  withCooldown,
} from './train-flags.js';

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
    // --lr-cooldown may change on resume where it leaves the updates made so far alone (withCooldown)
    refuseConflicts(`--resume: ${ckpt}`, trainConflicts(cmd, f, resumed.config, 'the checkpoint', ['lrCooldown']));
    noteUnverified('train', ckpt, resumed.digest === 'none');
  }
  const dataset = resumed ? parseDataset(resumed.config.dataset) : { source: f.data, limit: f.limit };
  const data = loadImages(dataset.source, { limit: dataset.limit });
  const recorded = resumed?.config ?? configFromFlags(f);
  checkBatchFits(recorded.batchSize, data.n, data.source);
  const end = targetStep(f, stepsPerEpoch(data.n, recorded.batchSize));
  const cfg = withCooldown(cmd, f, recorded, end, resumed?.state.step);
  // Sharded, every gradient is computed on one thread, as a 1-thread worker computes it.
  const backend = await startBackend(f.shards === undefined ? f : { ...f, threads: 1 });
  const trainer = (resumed ? Trainer.fromCheckpoint({ ...resumed, config: cfg }, data) : Trainer.create(cfg, data)).setAdam(
    nativeAdamFor(backend),
  );
  // The run id travels in every checkpoint, so a checkpoint says which run it continues.
  const run = resumed?.run ?? `train-${randomBytes(6).toString('hex')}`;
  mkdirSync(f.out, { recursive: true });
  removeStaleTemps('train', f.out);
  // The log holds each step once: lines past the checkpoint (steps a killed run did after it) go.
  const log = new StepLog(join(f.out, 'log.jsonl'));
  log.cut((step) => step <= trainer.step);
  const threads = poolThreads(backend, f.threads, f.shards);
  const pool = await GradPool.create({ threads, shards: f.shards, backend, config: cfg, data });
  trainer.setGradSource(pool);
  process.stderr.write(
    `train: recipe ${cfg.recipe}, ${data.source} (${data.n} images), batch ${cfg.batchSize}, lr ${cfg.lr}${cfg.lrCooldownSteps ? ` (cool-down from step ${cfg.lrCooldownStart})` : ''}, ${trainer.numParams} parameters, ` +
      `steps ${trainer.step} -> ${end}, ${f.shards ? `${f.shards} shards on ` : ''}${threads} pool thread(s), out ${f.out}\n`,
  );
  const bar = progressBar('train', ' | loss {loss} | {ips} img/s');
  bar.start(end, trainer.step, { loss: '-', ips: '-' });
  try {
    while (trainer.step < end) {
      const t0 = performance.now();
      const { epoch } = trainer.batch(trainer.step);
      const { loss, count, gradNorm } = await trainStep(trainer).catch((e: unknown) => {
        throw e instanceof NonFiniteError ? new Error(`${e.message}; stopped, the last good checkpoint is ${ckpt}`) : e;
      });
      const seconds = (performance.now() - t0) / 1000;
      const ips = count / seconds;
      log.append({ step: trainer.step, epoch, loss, grad_norm: gradNorm, images_per_s: ips, seconds, time: new Date().toISOString() });
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
