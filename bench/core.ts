/**
 * Core throughput of the reference ScoreNet, the same quantities as the PyTorch baseline
 * (reference/torch_baseline.py): training images/s (DSM loss, backward, Adam),
 * forward images/s at batch 64, and forward + input-gradient images/s at batch 64 (the
 * likelihood's Hutchinson evaluation).
 */
import * as tf from '@tensorflow/tfjs';
import { backendInfo, initBackend, type BackendName } from '../src/core/backend/index.js';
import { loadImages } from '../src/core/data/mnist.js';
import { Rng } from '../src/core/rng.js';
import { trainConfig } from '../src/core/train/config.js';
import { GradPool, poolThreads } from '../src/core/train/pool.js';
import { trainStep } from '../src/core/train/step.js';
import { Trainer } from '../src/core/train/trainer.js';
import { nativeAdamFor } from '../src/core/backend/native-adam.js';

export interface CoreFigures {
  backend: string;
  /** GradPool threads of the training figures. */
  pool_threads: number;
  /** The backend's own threads (libtorch intra-op on torch; 1 for wasm instances). */
  backend_threads?: number;
  train_images_per_s: Record<string, number>;
  sample_forward_images_per_s: number;
  likelihood_fe_images_per_s: number;
}

/** Median seconds of `reps` calls after `warmup` calls. */
export async function timed(fn: () => unknown | Promise<unknown>, reps: number, warmup = 1): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    times.push((performance.now() - t0) / 1000);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

export async function benchCore(
  backend: BackendName,
  opts: { threads?: number; reps?: number; device?: string } = {},
): Promise<CoreFigures> {
  // threads: libtorch intra-op threads on torch; GradPool threads (one per core by default) on wasm/cpu
  const name = await initBackend(backend, { threads: opts.threads, device: opts.device, log: () => {} });
  const threads = poolThreads(name, opts.threads);
  const reps = opts.reps ?? 5;
  const data = loadImages('train', { limit: 4096 });
  const train: Record<string, number> = {};
  for (const batch of [32, 128]) {
    const config = trainConfig({ batchSize: batch });
    const pool = await GradPool.create({ threads, backend: name, config, data });
    const trainer = Trainer.create(config, data).setGradSource(pool).setAdam(nativeAdamFor(name));
    train[`batch_${batch}`] = batch / (await timed(() => trainStep(trainer), reps));
    await pool.close();
    trainer.dispose();
  }

  const trainer = Trainer.create(trainConfig(), data);
  const net = trainer.engine.net;
  const p = net.tensors(trainer.params);
  const S = 64;
  const x = tf.tensor4d(new Rng(0).normal(S * 784), [S, 28, 28, 1]);
  const t = tf.fill([S], 0.5) as tf.Tensor1D;
  const eps = tf.tensor4d(new Rng(1).normal(S * 784), [S, 28, 28, 1]);
  // read the result back (that is when a lazy backend really computes), outside tidy: tidy
  // would walk every element of a returned typed array
  const readBack = (f: () => tf.Tensor) => {
    const y = tf.tidy(f);
    y.dataSync();
    y.dispose();
  };
  const fwd = () => readBack(() => net.apply(p, x, t));
  const div = () =>
    readBack(() =>
      tf.grad((xg: tf.Tensor) =>
        net
          .apply(p, xg as tf.Tensor4D, t)
          .mul(eps)
          .sum(),
      )(x),
    );
  const out: CoreFigures = {
    backend: name,
    pool_threads: threads,
    backend_threads: backendInfo().threads,
    train_images_per_s: train,
    sample_forward_images_per_s: S / (await timed(fwd, reps)),
    likelihood_fe_images_per_s: S / (await timed(div, reps)),
  };
  tf.dispose([x, t, eps, ...Object.values(p)]);
  return out;
}

/**
 * Leak check: `steps` training steps of the reference ScoreNet; tfjs's live tensor count (and
 * libtorch's, on torch) and the process RSS, sampled ten times along the way.
 */
export async function leakCheck(backend: BackendName, steps: number, batch = 8): Promise<Record<string, unknown>> {
  const name = await initBackend(backend, { log: () => {} });
  const data = loadImages('train', { limit: 1024 });
  const config = trainConfig({ batchSize: batch });
  const pool = await GradPool.create({ threads: 1, backend: name, config, data });
  const trainer = Trainer.create(config, data).setGradSource(pool).setAdam(nativeAdamFor(name));
  const rows: Array<Record<string, number>> = [];
  for (let k = 0; k < steps; k++) {
    await trainStep(trainer);
    if (k % Math.max(1, Math.floor(steps / 10)) === 0 || k === steps - 1) {
      const mem = tf.memory() as tf.MemoryInfo & { numTorchTensors?: number };
      rows.push({
        step: k + 1,
        tfjs_tensors: mem.numTensors,
        ...(mem.numTorchTensors !== undefined ? { torch_tensors: mem.numTorchTensors } : {}),
        rss_mib: Math.round(process.memoryUsage().rss / 2 ** 20),
      });
    }
  }
  await pool.close();
  return { backend: name, batch, steps, samples: rows };
}
