/**
 * `scoreflow encode`: digits -> latents x(1) through the probability-flow ODE (t = eps -> 1, RK45),
 * the inverse of `scoreflow sample --sampler ode --latent`. Writes FILE.npy (float32
 * [N,1,28,28], NumPy's format), FILE.png (a grid of the latents, scaled) and FILE.json (a summary)
 * as one atomic set (like `sample`).
 *
 * The images go in as the data set's raw [0,1] pixels, not dequantised: dequantisation noise is
 * only there to make likelihoods of discrete bytes well defined, and it would make decoding the
 * latents give back noisy pixels instead of the images.
 */
import { Command, Option } from 'commander';
import { checkImageShape, loadImages } from '../core/data/mnist.js';
import { writeFilesAtomic } from '../core/io/atomic.js';
import { encodeNpyChunks } from '../core/io/npy.js';
import { pngGrid } from '../core/io/png.js';
import { SAMPLE_DEFAULTS, encode } from '../core/sampling/index.js';
import { loadScoreModel } from '../core/score/net.js';
import { backendOption, deviceOption, noteUnverified, parseFloatArg, parseIntArg, startBackend } from './common.js';
import { progressBar } from './progress.js';
import { outputPaths } from './sample.js';

export interface EncodeFlags {
  ckpt: string;
  split: 'test' | 'train';
  data?: string;
  limit?: number;
  rtol: number;
  atol: number;
  eps: number;
  batchSize: number;
  raw: boolean;
  backend: string;
  device?: string;
  out: string;
}

/** The PNG shows latent z as 0.5 + z / (PNG_STDS * 2 * prior std), clipped: +-3 prior stds span black to white. */
export const PNG_STDS = 3;

/** Latents as [0,1] grey levels for the PNG grid (see PNG_STDS). */
export function latentPixels(latent: Float32Array, priorStd: number): Float32Array {
  const k = 1 / (2 * PNG_STDS * priorStd);
  return Float32Array.from(latent, (z) => 0.5 + z * k);
}

async function encodeCommand(f: EncodeFlags): Promise<void> {
  // validate everything before the (slow) backend start and model load
  const paths = outputPaths(f.out);
  const images = loadImages(f.data ?? f.split, { limit: f.limit });
  const backend = await startBackend(f);
  const model = loadScoreModel(f.ckpt, { ema: !f.raw });
  noteUnverified('encode', f.ckpt, model.unverified);
  try {
    checkImageShape(images, model.shape);
    const { h, w } = images;
    const n = images.n;
    process.stderr.write(
      `encode: ${n} images of ${images.source} with ${f.ckpt} (${model.which} weights${model.step !== null ? `, step ${model.step}` : ''}), eps ${f.eps}, rtol ${f.rtol}, atol ${f.atol}\n`,
    );
    const bar = progressBar('encode');
    bar.start(n, 0);
    const t0 = performance.now();
    let r;
    try {
      r = await encode(model, images.data, {
        eps: f.eps,
        rtol: f.rtol,
        atol: f.atol,
        batchSize: f.batchSize,
        onProgress: (done) => bar.update(done),
      });
    } finally {
      bar.stop();
    }
    const { latent, nfe } = r;
    const seconds = (performance.now() - t0) / 1000;
    const priorStd = model.sde.priorStd();
    const nfeList = Array.from(nfe);
    const summary = {
      command: 'encode',
      n,
      data: images.source,
      pixels: 'raw [0,1], not dequantised',
      ckpt: f.ckpt,
      weights: model.which,
      step: model.step,
      eps: f.eps,
      rtol: f.rtol,
      atol: f.atol,
      nfe: nfeList.reduce((s, v) => s + v, 0) / n,
      nfe_max: Math.max(...nfeList),
      seconds,
      seconds_per_image: seconds / n,
      backend,
      prior_std: priorStd,
      png: `grey = 0.5 + z / (${2 * PNG_STDS} * prior_std), clipped to [0,1]: +-${PNG_STDS} prior stds span black to white`,
      decode: `scoreflow sample --ckpt ${f.ckpt}${f.raw ? ' --raw' : ''} --sampler ode --latent ${paths.npy} --eps ${f.eps}`,
      files: paths,
    };
    await writeFilesAtomic([
      [paths.npy, encodeNpyChunks({ shape: [n, 1, h, w], data: latent }, paths.npy)],
      // white borders: grey, the default, is latent 0 here
      [paths.png, pngGrid(latentPixels(latent, priorStd), n, h, w, { padValue: 1 })],
      [paths.json, JSON.stringify(summary, null, 2) + '\n'],
    ]);
    process.stdout.write(JSON.stringify(summary) + '\n');
  } finally {
    model.dispose();
  }
}

export function registerEncode(program: Command): void {
  program
    .command('encode')
    .description(
      'images -> latents x(1) through the probability-flow ODE (RK45, t = eps -> 1); `sample --sampler ode --latent` decodes them',
    )
    .requiredOption('--ckpt <path>', 'training checkpoint (EMA weights) or bare PyTorch-layout state_dict (safetensors)')
    .addOption(new Option('--split <split>', 'MNIST split').choices(['test', 'train']).default('test'))
    .option('--data <source>', 'IDX image file (or .npy, or a data set name) instead of --split')
    .option('--limit <n>', 'the first n images', parseIntArg(1))
    .option('--rtol <r>', 'RK45 relative tolerance', parseFloatArg({ exclusiveMin: 0 }), SAMPLE_DEFAULTS.rtol)
    .option('--atol <a>', 'RK45 absolute tolerance', parseFloatArg({ exclusiveMin: 0 }), SAMPLE_DEFAULTS.atol)
    .option(
      '--eps <t>',
      'integrate from t = eps (decode with the same --eps)',
      parseFloatArg({ exclusiveMin: 0, max: 0.5 }),
      SAMPLE_DEFAULTS.eps,
    )
    .option('--batch-size <b>', 'images per batch', parseIntArg(1), SAMPLE_DEFAULTS.batchSize)
    .option('--raw', 'use the raw parameters, not the EMA weights', false)
    .addOption(backendOption())
    .addOption(deviceOption())
    .option('--out <file.npy>', 'latents; the .png grid and .json summary go beside it', 'latents.npy')
    .addHelpText(
      'after',
      '\nImages are encoded as raw [0,1] pixels, not dequantised (unlike `likelihood`), so that\n' +
        'decoding the latents with `scoreflow sample --sampler ode --latent FILE.npy` (same --ckpt,\n' +
        '--eps, --raw) gives the images back, as closely as the ODE tolerances allow (tighten both\n' +
        'sides, e.g. to 1e-7, for a close round trip). The PNG shows each latent z as\n' +
        `0.5 + z / (${2 * PNG_STDS} * prior std), clipped: +-${PNG_STDS} prior standard deviations span black to white.\n`,
    )
    .action((opts: EncodeFlags) => encodeCommand(opts));
}
