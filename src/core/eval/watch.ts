/**
 * Watching a run train (`--eval-every N`): at a step, the sampling weights are scored the same
 * way every time, so the curve is comparable across steps and across runs:
 *   - bits/dim (likelihood.ts, the defaults of `scoreflow likelihood`: uniform dequantisation,
 *     one Gaussian probe, RK45 at 1e-5) of the first `images` MNIST test images, seed 0;
 *   - a grid of `samples` Heun samples (the defaults of `scoreflow sample`, 99 NFE), seed 0.
 * Written under DIR/eval/ as step-K.png (the grid) and step-K.json (the record below), together
 * and atomically.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadImages } from '../data/mnist.js';
import { writeFilesAtomic } from '../io/atomic.js';
import { pngGrid } from '../io/png.js';
import { likelihoodRange, meanAndStderr } from '../likelihood.js';
import { sampleRange } from '../sampling/index.js';
import type { ScoreModel } from '../score/batch.js';

export interface WatchOptions {
  /** Test images for bits/dim (the first ones of the split; default 64). */
  images?: number;
  /** Heun samples in the grid (default 64). */
  samples?: number;
  /** RK45 rtol = atol of the bits/dim (default 1e-5, as `scoreflow likelihood`). */
  tol?: number;
}

export interface WatchRecord {
  step: number;
  bpd: number;
  bpd_stderr: number;
  bpd_images: number;
  /** Network evaluations per image of the likelihood, and per sample. */
  bpd_nfe: number;
  samples: number;
  sample_nfe: number;
  /** Wall seconds of the likelihood and of the sampling. */
  bpd_seconds: number;
  sample_seconds: number;
  png: string;
}

export const WATCH_DEFAULTS = { images: 64, samples: 64, seed: 0, tol: 1e-5 } as const;

export async function watchStep(model: ScoreModel, step: number, outDir: string, opts: WatchOptions = {}): Promise<WatchRecord> {
  const nImages = opts.images ?? WATCH_DEFAULTS.images;
  const nSamples = opts.samples ?? WATCH_DEFAULTS.samples;
  const images = loadImages('test', { limit: nImages });
  let t0 = performance.now();
  const tol = opts.tol ?? WATCH_DEFAULTS.tol;
  const l = await likelihoodRange(model, images.data, 0, images.n, { seed: WATCH_DEFAULTS.seed, rtol: tol, atol: tol });
  const bpdSeconds = (performance.now() - t0) / 1000;
  t0 = performance.now();
  const s = await sampleRange(model, { sampler: 'heun', seed: WATCH_DEFAULTS.seed }, 0, nSamples);
  const sampleSeconds = (performance.now() - t0) / 1000;
  const { mean, stderr } = meanAndStderr(l.bpd);
  const [h, w] = model.shape;
  const dir = join(outDir, 'eval');
  const base = `step-${step}`;
  const record: WatchRecord = {
    step,
    bpd: mean,
    bpd_stderr: stderr,
    bpd_images: images.n,
    bpd_nfe: l.nfe.reduce((a, b) => a + b, 0) / images.n,
    samples: nSamples,
    sample_nfe: s.nfe.length ? s.nfe.reduce((a, b) => a + b, 0) / s.nfe.length : 0,
    bpd_seconds: bpdSeconds,
    sample_seconds: sampleSeconds,
    png: join(dir, `${base}.png`),
  };
  mkdirSync(dir, { recursive: true });
  await writeFilesAtomic([
    [record.png, pngGrid(s.samples, nSamples, h, w)],
    [join(dir, `${base}.json`), JSON.stringify(record) + '\n'],
  ]);
  return record;
}
