/**
 * `scoreflow sample`: noise -> digits with a trained ScoreNet. Writes FILE.npy (float32
 * [N,1,28,28], NumPy's format), FILE.png (a grid) and FILE.json (a summary) as one atomic set.
 */
import { dirname } from 'node:path';
import { Command, Option } from 'commander';
import { availableMemory, formatBytes, freeDisk } from '../core/io/limits.js';
import { encodeNpyChunks, readNpy } from '../core/io/npy.js';
import { writeFilesAtomic } from '../core/io/atomic.js';
import { pngGrid } from '../core/io/png.js';
import {
  HEUN_DEFAULTS,
  SAMPLE_DEFAULTS,
  SAMPLER_NAMES,
  resolveSampleOptions,
  sampleRange,
  type SampleOptions,
  type SamplerName,
} from '../core/sampling/index.js';
import { loadScoreModel } from '../core/score/net.js';
import {
  backendOption,
  checkOutDir,
  deviceOption,
  noteUnverified,
  parseFloatArg,
  parseIntArg,
  removeStaleTemps,
  startBackend,
} from './common.js';
import { progressBar } from './progress.js';

export interface SampleFlags {
  ckpt: string;
  sampler: SamplerName;
  n: number;
  steps?: number;
  snr: number;
  correctorSteps: number;
  churn: number;
  sTmin: number;
  sTmax: number;
  sNoise: number;
  rho: number;
  rtol: number;
  atol: number;
  eps: number;
  seed: number;
  batchSize: number;
  latent?: string;
  raw: boolean;
  backend: string;
  device?: string;
  out: string;
}

/** The three outputs beside each other: X.npy, X.png, X.json. */
export function outputPaths(out: string): { npy: string; png: string; json: string } {
  if (!out.endsWith('.npy')) throw new Error(`--out must name a .npy file, got '${out}'`);
  const stem = out.slice(0, -4);
  checkOutDir('--out', out);
  return { npy: out, png: `${stem}.png`, json: `${stem}.json` };
}

/** A latent .npy of n rows of h*w values ([n,1,h,w], [n,h,w] or [n,h*w]). */
export function readLatent(path: string, h: number, w: number): { data: Float32Array; n: number } {
  const { shape, data } = readNpy(path);
  const ok =
    (shape.length === 4 && shape[1] === 1 && shape[2] === h && shape[3] === w) ||
    (shape.length === 3 && shape[1] === h && shape[2] === w) ||
    (shape.length === 2 && shape[1] === h * w);
  if (!ok || shape[0] < 1) throw new Error(`${path}: latent has shape [${shape.join(',')}], expected [N,1,${h},${w}]`);
  return { data, n: shape[0] };
}

async function sample(f: SampleFlags, cmd: Command): Promise<void> {
  const paths = outputPaths(f.out);
  // validate everything before the (slow) backend start and model load
  const nGiven = cmd.getOptionValueSource('n') === 'cli';
  const opts = sampleOptions(f);
  const resolved = resolveSampleOptions(opts);
  if (f.latent !== undefined && f.sampler !== 'ode') throw new Error(`--latent needs --sampler ode (got ${f.sampler})`);
  removeStaleTemps('sample', dirname(f.out));
  const backend = await startBackend(f);
  const model = loadScoreModel(f.ckpt, { ema: !f.raw });
  noteUnverified('sample', f.ckpt, model.unverified);
  try {
    const [h, w] = model.shape;
    let n = f.n;
    if (f.latent !== undefined) {
      const lat = readLatent(f.latent, h, w);
      if (nGiven && f.n > lat.n) throw new Error(`--n ${f.n} exceeds the ${lat.n} latents in ${f.latent}`);
      n = nGiven ? f.n : lat.n;
      opts.latent = lat.data;
    }
    const bytes = checkSampleOutput(f.out, n, h, w);
    process.stderr.write(
      `sample: ${f.sampler}, ${n} images from ${f.ckpt} (${model.which} weights${model.step !== null ? `, step ${model.step}` : ''}), seed ${f.seed}, ${formatBytes(bytes)} of output\n`,
    );
    const bar = progressBar('sample');
    bar.start(n, 0);
    const t0 = performance.now();
    let r;
    try {
      r = await sampleRange(model, { ...opts, onProgress: (done) => bar.update(Math.floor(done)) }, 0, n);
    } finally {
      bar.stop();
    }
    const seconds = (performance.now() - t0) / 1000;
    const summary = sampleSummary(f, { n, resolved, nfe: r.nfe, calls: r.calls, seconds, backend, weights: model.which, paths });
    await writeSampleSet(paths, [n, 1, h, w], r.samples, summary);
    process.stdout.write(JSON.stringify(summary) + '\n');
  } finally {
    model.dispose();
  }
}

/** The sampler options of the flags (validated by resolveSampleOptions). */
export function sampleOptions(f: SampleFlags): SampleOptions {
  return {
    sampler: f.sampler,
    seed: f.seed,
    steps: f.steps,
    eps: f.eps,
    snr: f.snr,
    correctorSteps: f.correctorSteps,
    rtol: f.rtol,
    atol: f.atol,
    rho: f.rho,
    churn: f.churn,
    sTmin: f.sTmin,
    sTmax: f.sTmax,
    sNoise: f.sNoise,
    batchSize: f.batchSize,
  };
}

/** The JSON summary written beside the samples (and printed). */
export function sampleSummary(
  f: SampleFlags,
  r: {
    n: number;
    resolved: ReturnType<typeof resolveSampleOptions>;
    nfe: ArrayLike<number>;
    calls: number;
    seconds: number;
    backend: string;
    weights: string;
    paths: ReturnType<typeof outputPaths>;
  },
) {
  const nfe = Array.from(r.nfe);
  return {
    sampler: f.sampler,
    n: r.n,
    steps: f.sampler === 'ode' ? null : r.resolved.steps,
    nfe: nfe.reduce((a, b) => a + b, 0) / r.n,
    nfe_max: Math.max(...nfe),
    network_calls: r.calls,
    seed: f.seed,
    seconds: r.seconds,
    seconds_per_image: r.seconds / r.n,
    backend: r.backend,
    ckpt: f.ckpt,
    weights: r.weights,
    settings: settingsOf(r.resolved),
    latent: f.latent ?? null,
    files: r.paths,
  };
}

/** The PNG grid shows at most this many images (the first ones): a grid of millions would not fit in a Buffer. */
export const PNG_MAX_IMAGES = 10_000;

/**
 * Throws one line unless n images of h x w fit in memory now (the float32 samples, the PNG
 * grid) and on the file system of the output (the .npy, the .png); else returns the bytes of
 * the .npy, for the start line. Checked before any sampling, so a --n too large for the
 * machine fails at once, not after hours or with "Invalid typed array length".
 */
export function checkSampleOutput(out: string, n: number, h: number, w: number): number {
  const npy = 4 * n * h * w + 128;
  const png = Math.min(n, PNG_MAX_IMAGES) * (h + 2) * (w + 2);
  const fits = (need: number, have: number) => `use --n ${Math.floor((n * have) / need)} or less`;
  const memory = npy + 3 * png; // the samples, the grid's pixels, the PNG encoder's copies
  const free = availableMemory();
  if (memory > free)
    throw new Error(
      `--n ${n}: ${n} images of ${h}x${w} need ${formatBytes(memory)} of memory, ${formatBytes(free)} is available; ${fits(memory, free)}`,
    );
  const disk = npy + png;
  const dir = dirname(out);
  const space = freeDisk(dir);
  if (disk > space)
    throw new Error(
      `--n ${n}: the outputs need ${formatBytes(disk)} on disk in ${dir}, ${formatBytes(space)} is free; ${fits(disk, space)}`,
    );
  return npy;
}

/** X.npy (float32 [n,1,h,w]), X.png (the first PNG_MAX_IMAGES) and X.json, written as one atomic set. */
export async function writeSampleSet(
  paths: ReturnType<typeof outputPaths>,
  shape: [number, number, number, number],
  samples: Float32Array,
  summary: object,
): Promise<void> {
  const [n, , h, w] = shape;
  const shown = Math.min(n, PNG_MAX_IMAGES);
  await writeFilesAtomic([
    [paths.npy, encodeNpyChunks({ shape, data: samples }, paths.npy)],
    [paths.png, pngGrid(samples.subarray(0, shown * h * w), shown, h, w)],
    [paths.json, JSON.stringify(summary, null, 2) + '\n'],
  ]);
}

export function settingsOf(o: ReturnType<typeof resolveSampleOptions>): Record<string, number> {
  switch (o.sampler) {
    case 'em':
      return { eps: o.eps, steps: o.steps };
    case 'pc':
      return { eps: o.eps, steps: o.steps, snr: o.snr, corrector_steps: o.correctorSteps };
    case 'ode':
      return { eps: o.eps, rtol: o.rtol, atol: o.atol };
    case 'heun':
      return { eps: o.eps, steps: o.steps, rho: o.rho, churn: o.churn, s_tmin: o.sTmin, s_tmax: o.sTmax, s_noise: o.sNoise };
  }
}

export function registerSample(program: Command): void {
  addSampleOptions(
    program.command('sample').description('generate images with em, pc (predictor-corrector), ode (probability flow, RK45) or heun (EDM)'),
  )
    .addOption(backendOption())
    .addOption(deviceOption())
    .action((opts: SampleFlags, cmd: Command) => sample(opts, cmd));
}

/** The flags of `scoreflow sample` but --backend and --device (shared with `coordinator sample`). */
export function addSampleOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--ckpt <path>', 'training checkpoint (EMA weights) or bare PyTorch-layout state_dict (safetensors)')
    .addOption(new Option('--sampler <name>', 'sampler').choices(SAMPLER_NAMES as unknown as string[]).default('em'))
    .option('--n <n>', 'number of images (checked against free memory and disk)', parseIntArg(1), 64)
    .option(
      '--steps <n>',
      `em/pc time steps (default ${SAMPLE_DEFAULTS.emSteps}); heun noise levels N, NFE 2N-1 (default ${HEUN_DEFAULTS.steps})`,
      parseIntArg(1, 1e6),
    )
    .option('--snr <r>', 'pc: Langevin signal-to-noise ratio', parseFloatArg({ exclusiveMin: 0 }), SAMPLE_DEFAULTS.snr)
    .option('--corrector-steps <n>', 'pc: Langevin steps per time step', parseIntArg(0, 1000), SAMPLE_DEFAULTS.correctorSteps)
    .option('--churn <s>', 'heun: EDM S_churn (0: deterministic)', parseFloatArg({ min: 0 }), HEUN_DEFAULTS.churn)
    .option('--s-tmin <s>', 'heun: churn only at noise levels >= this', parseFloatArg({ min: 0 }), HEUN_DEFAULTS.sTmin)
    .option('--s-tmax <s>', 'heun: churn only at noise levels <= this', parseFloatArg({ min: 0 }), HEUN_DEFAULTS.sTmax)
    .option('--s-noise <s>', 'heun: churn noise scale', parseFloatArg({ exclusiveMin: 0 }), HEUN_DEFAULTS.sNoise)
    .option('--rho <r>', 'heun: time discretisation exponent', parseFloatArg({ exclusiveMin: 0 }), HEUN_DEFAULTS.rho)
    .option('--rtol <r>', 'ode: RK45 relative tolerance, in (0, 1]', parseFloatArg({ exclusiveMin: 0, max: 1 }), SAMPLE_DEFAULTS.rtol)
    .option('--atol <a>', 'ode: RK45 absolute tolerance, in (0, 1]', parseFloatArg({ exclusiveMin: 0, max: 1 }), SAMPLE_DEFAULTS.atol)
    .option('--eps <t>', 'integrate down to t = eps', parseFloatArg({ exclusiveMin: 0, max: 0.5 }), SAMPLE_DEFAULTS.eps)
    .option('--seed <s>', 'seed: image i depends only on (seed, i)', parseIntArg(0), 0)
    .option('--batch-size <b>', 'images per batch', parseIntArg(1, 65536), SAMPLE_DEFAULTS.batchSize)
    .option('--latent <file.npy>', 'ode: decode these x(1) latents [N,1,28,28] instead of prior draws')
    .option('--raw', 'use the raw parameters, not the EMA weights', false)
    .option('--out <file.npy>', 'samples; the .png grid and .json summary go beside it', 'samples.npy');
}
