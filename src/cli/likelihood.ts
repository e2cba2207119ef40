/**
 * `scoreflow likelihood`: bits/dim of a data split under the model (probability-flow ODE,
 * Skilling–Hutchinson divergence, uniform dequantisation), as JSON on stdout and in --out.
 */
import { Command, Option } from 'commander';
import { checkImageShape, loadImages } from '../core/data/mnist.js';
import { writeFileAtomic } from '../core/io/atomic.js';
import {
  DEQUANTISATIONS,
  DIVERGENCE_MODES,
  likelihoodRange,
  meanAndStderr,
  type Dequantisation,
  type DivergenceMode,
} from '../core/likelihood.js';
import { loadScoreModel } from '../core/score/net.js';
import { backendOption, checkOutDir, deviceOption, noteUnverified, parseFloatArg, parseIntArg, startBackend } from './common.js';
import { progressBar } from './progress.js';

export interface LikelihoodFlags {
  ckpt: string;
  split: 'test' | 'train';
  data?: string;
  limit?: number;
  seed: number;
  probes: number;
  hutchinson: DivergenceMode;
  dequantise: Dequantisation;
  rtol: number;
  atol: number;
  eps: number;
  batchSize: number;
  raw: boolean;
  backend: string;
  device?: string;
  out?: string;
}

/** The flags as the options of core's likelihood (and of a `coordinator likelihood` job spec). */
export function likelihoodOptions(f: LikelihoodFlags) {
  const { seed, hutchinson, probes, rtol, atol, eps, batchSize, dequantise } = f;
  return { seed, hutchinson, probes, rtol, atol, eps, batchSize, dequantise };
}

async function likelihood(f: LikelihoodFlags): Promise<void> {
  if (f.out !== undefined && !f.out.endsWith('.json')) throw new Error(`--out must name a .json file, got '${f.out}'`);
  if (f.out !== undefined) checkOutDir('--out', f.out);
  const images = loadImages(f.data ?? f.split, { limit: f.limit });
  const backend = await startBackend(f);
  const model = loadScoreModel(f.ckpt, { ema: !f.raw });
  noteUnverified('likelihood', f.ckpt, model.unverified);
  try {
    checkImageShape(images, model.shape);
    process.stderr.write(
      `likelihood: ${images.n} images of ${images.source}, ${f.hutchinson}${f.hutchinson === 'exact' ? '' : ` x${f.probes}`}, rtol ${f.rtol}, atol ${f.atol}\n`,
    );
    const bar = progressBar('likelihood');
    bar.start(images.n, 0);
    const t0 = performance.now();
    let r;
    try {
      r = await likelihoodRange(model, images.data, 0, images.n, {
        ...likelihoodOptions(f),
        onProgress: (done) => bar.update(done),
      });
    } finally {
      bar.stop();
    }
    const seconds = (performance.now() - t0) / 1000;
    const report = likelihoodReport(f, {
      bpd: r.bpd,
      probeVar: r.probeVar,
      nfe: r.nfe,
      n: images.n,
      source: images.source,
      weights: model.which,
      seconds,
      backend,
    });
    await emitLikelihoodReport(f, report);
  } finally {
    model.dispose();
  }
}

/**
 * The probes' share of the squared standard error of the mean: (sum_i probeVar_i / n^2) / stderr^2,
 * the part of the mean's variance that more probes would remove (null with one probe: unmeasurable).
 */
export function probeShare(bpd: ArrayLike<number>, probeVar: ArrayLike<number>): number | null {
  const n = bpd.length;
  const { stderr } = meanAndStderr(bpd);
  let s = 0;
  for (let i = 0; i < n; i++) s += probeVar[i];
  const share = s / (n * n) / (stderr * stderr);
  return Number.isFinite(share) ? share : null;
}

/** The JSON report: mean bits/dim with its standard error, settings, and the per-image values. */
export function likelihoodReport(
  f: LikelihoodFlags,
  r: {
    bpd: Float64Array;
    probeVar: Float64Array;
    nfe: ArrayLike<number>;
    n: number;
    source: string;
    weights: string;
    seconds: number;
    backend: string;
  },
) {
  const { mean, stderr } = meanAndStderr(r.bpd);
  const nfe = Array.from(r.nfe);
  return {
    bpd: mean,
    bpd_stderr: stderr,
    probe_share: probeShare(r.bpd, r.probeVar),
    dequantise: f.dequantise,
    n: r.n,
    data: r.source,
    ckpt: f.ckpt,
    weights: r.weights,
    seed: f.seed,
    hutchinson: f.hutchinson,
    probes: f.hutchinson === 'exact' ? null : f.probes,
    rtol: f.rtol,
    atol: f.atol,
    eps: f.eps,
    nfe: nfe.reduce((a, b) => a + b, 0) / r.n,
    seconds: r.seconds,
    seconds_per_image: r.seconds / r.n,
    backend: r.backend,
    per_image: Array.from(r.bpd),
  };
}

/** The report as one JSON line on stdout, and atomically in --out. */
export async function emitLikelihoodReport(f: { out?: string }, report: object): Promise<void> {
  const text = JSON.stringify(report) + '\n';
  if (f.out !== undefined) await writeFileAtomic(f.out, text);
  process.stdout.write(text);
}

export function registerLikelihood(program: Command): void {
  addLikelihoodOptions(
    program
      .command('likelihood')
      .description('bits/dim of images under the model (probability-flow ODE + Hutchinson), mean and standard error'),
  )
    .addOption(backendOption())
    .addOption(deviceOption())
    .action((opts: LikelihoodFlags) => likelihood(opts));
}

/** The flags of `scoreflow likelihood` but --backend and --device (shared with `coordinator likelihood`). */
export function addLikelihoodOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--ckpt <path>', 'training checkpoint (EMA weights) or bare PyTorch-layout state_dict (safetensors)')
    .addOption(new Option('--split <split>', 'MNIST split').choices(['test', 'train']).default('test'))
    .option('--data <source>', 'IDX image file (or .npy, or a data set name) instead of --split')
    .option('--limit <n>', 'the first n images', parseIntArg(1))
    .option('--seed <s>', 'seed of the dequantisation noise and probes (image i: (seed, i))', parseIntArg(0), 0)
    .option('--probes <k>', 'Hutchinson probes per image', parseIntArg(1, 10_000), 1)
    .addOption(
      new Option('--hutchinson <kind>', 'divergence estimator (exact: one backward pass per dimension)')
        .choices(DIVERGENCE_MODES as unknown as string[])
        .default('gaussian'),
    )
    .addOption(
      new Option('--dequantise <kind>', 'uniform: (b + u)/256, +8 bits (the reference); truncnormal: Zheng et al. 2023 (README)')
        .choices(DEQUANTISATIONS.filter((d) => d !== 'none'))
        .default('uniform'),
    )
    .option('--rtol <r>', 'RK45 relative tolerance, in (0, 1]', parseFloatArg({ exclusiveMin: 0, max: 1 }), 1e-5)
    .option('--atol <a>', 'RK45 absolute tolerance, in (0, 1]', parseFloatArg({ exclusiveMin: 0, max: 1 }), 1e-5)
    .option('--eps <t>', 'integrate from t = eps', parseFloatArg({ exclusiveMin: 0, max: 0.5 }), 1e-3)
    .option('--batch-size <b>', 'images per batch', parseIntArg(1, 65536), 32)
    .option('--raw', 'use the raw parameters, not the EMA weights', false)
    .option('--out <file.json>', 'also write the JSON report here (atomically)');
}
