/**
 * Sampling and likelihood speed: seconds per image for each sampler at its default settings, and
 * bits/dim seconds per image, beside the reference PyTorch samplers (reference/samplers.py and
 * likelihood.py, timed by reference/sampling_baseline.py with Debian's /usr/bin/python3) on the
 * same machine and the same weights (the reference architecture from the parity fixture).
 *
 * What is measured and what is extrapolated:
 * - em, pc, heun: a few steps on `n` images, timed; every step of these samplers costs the same
 *   network evaluations, so seconds per image at the default settings = (seconds per step per
 *   image) x (default steps). Stated as `measured_steps` and `extrapolated_to_steps`.
 * - ode and likelihood: run for real at `rtol` = `atol` (both sides the same), with their NFE. Their
 *   NFE depend on the model (the parity weights are untrained), so seconds per NFE per image are
 *   reported as well, to scale to a trained model's NFE.
 */
import { spawnSync } from 'node:child_process';
import { initBackend, type BackendName } from '../src/core/backend/index.js';
import { loadImages } from '../src/core/data/mnist.js';
import { likelihoodRange } from '../src/core/likelihood.js';
import { packagePath } from '../src/core/paths.js';
import { HEUN_DEFAULTS, SAMPLE_DEFAULTS, sampleRange, type SampleOptions } from '../src/core/sampling/index.js';
import { scoreModelFromStateDict } from '../src/core/score/net.js';

export interface SamplingBenchOptions {
  backend?: BackendName;
  /** Images per measurement (default 8; quick 4). */
  n?: number;
  /** ODE sampler and likelihood tolerance on both sides (default 1e-3; the samplers' default is 1e-5). */
  rtol?: number;
  quick?: boolean;
  /** Weights (default: the parity fixture, the reference architecture). */
  weights?: string;
  /** Threads for PyTorch (default 1, as tfjs-wasm under Node). */
  torchThreads?: number;
}

export async function benchSampling(opts: SamplingBenchOptions = {}): Promise<Record<string, unknown>> {
  const quick = opts.quick ?? false;
  const n = opts.n ?? (quick ? 4 : 8);
  const rtol = opts.rtol ?? 1e-3;
  const weights = opts.weights ?? packagePath('test', 'fixtures', 'scorenet_parity.safetensors');
  const backend = await initBackend(opts.backend ?? 'wasm', { log: () => {} });
  const model = scoreModelFromStateDict(weights);
  const few = { em: quick ? 5 : 20, pc: quick ? 3 : 10, heun: quick ? 3 : 6 };
  const out: Record<string, unknown> = { backend, n, batch_size: n, weights, rtol_atol: rtol };
  try {
    // warm-up (kernel compilation, first-call allocations)
    await sampleRange(model, { sampler: 'em', steps: 2, seed: 0, batchSize: n }, 0, n);

    const stepwise = async (sampler: 'em' | 'pc' | 'heun', steps: number, defaultSteps: number, nfeAt: (s: number) => number) => {
      const o: SampleOptions = { sampler, steps, seed: 0, batchSize: n };
      const t0 = performance.now();
      await sampleRange(model, o, 0, n);
      const s = (performance.now() - t0) / 1000;
      // heun's first step and last step differ (Euler to 0): count NFE, not steps
      const perNfe = s / nfeAt(steps) / n;
      return {
        measured_steps: steps,
        measured_nfe: nfeAt(steps),
        seconds_per_nfe_per_image: perNfe,
        extrapolated_to_steps: defaultSteps,
        nfe: nfeAt(defaultSteps),
        seconds_per_image: perNfe * nfeAt(defaultSteps),
      };
    };
    out.em = await stepwise('em', few.em, SAMPLE_DEFAULTS.emSteps, (s) => s);
    out.pc = await stepwise('pc', few.pc, SAMPLE_DEFAULTS.emSteps, (s) => s * (SAMPLE_DEFAULTS.correctorSteps + 1));
    out.heun = await stepwise('heun', few.heun, HEUN_DEFAULTS.steps, (s) => 2 * s - 1);

    let t0 = performance.now();
    const ode = await sampleRange(model, { sampler: 'ode', rtol, atol: rtol, seed: 0, batchSize: n }, 0, n);
    let s = (performance.now() - t0) / 1000;
    const odeNfe = Array.from(ode.nfe).reduce((a, b) => a + b, 0) / n;
    out.ode = { rtol, nfe: odeNfe, network_calls: ode.calls, seconds_per_image: s / n, seconds_per_nfe_per_image: s / n / odeNfe };

    const images = loadImages('test', { limit: n });
    t0 = performance.now();
    const lik = await likelihoodRange(model, images.data, 0, n, { seed: 0, rtol, atol: rtol, batchSize: n });
    s = (performance.now() - t0) / 1000;
    const likNfe = Array.from(lik.nfe).reduce((a, b) => a + b, 0) / n;
    out.likelihood = {
      rtol,
      hutchinson: 'gaussian x1',
      nfe: likNfe,
      seconds_per_image: s / n,
      seconds_per_nfe_per_image: s / n / likNfe,
      bpd_mean: Array.from(lik.bpd).reduce((a, b) => a + b, 0) / n,
    };
  } finally {
    model.dispose();
  }

  out.pytorch_reference = referenceFigures(weights, n, rtol, few, opts.torchThreads ?? 1);
  const ref = out.pytorch_reference as Record<
    string,
    { seconds_per_image?: number; seconds_per_image_at_500_steps?: number; seconds_per_nfe_per_image?: number }
  >;
  if (!('error' in ref)) {
    const ours = out as Record<string, { seconds_per_image: number; seconds_per_nfe_per_image: number }>;
    out.ratio_to_pytorch = {
      em_seconds_per_image: ours.em.seconds_per_image / (ref.em.seconds_per_image_at_500_steps ?? NaN),
      pc_seconds_per_image: ours.pc.seconds_per_image / (ref.pc.seconds_per_image_at_500_steps ?? NaN),
      ode_seconds_per_nfe_per_image: ours.ode.seconds_per_nfe_per_image / (ref.ode.seconds_per_nfe_per_image ?? NaN),
      likelihood_seconds_per_nfe_per_image: ours.likelihood.seconds_per_nfe_per_image / (ref.likelihood.seconds_per_nfe_per_image ?? NaN),
      heun_vs_pytorch_pc_seconds_per_image: ours.heun.seconds_per_image / (ref.pc.seconds_per_image_at_500_steps ?? NaN),
    };
  }
  return out;
}

/** reference/sampling_baseline.py with Debian's python3 (the one that imports torch and scipy). */
function referenceFigures(
  weights: string,
  n: number,
  rtol: number,
  few: { em: number; pc: number },
  threads: number,
): Record<string, unknown> {
  const script = packagePath('reference', 'sampling_baseline.py');
  const args = [
    script,
    weights,
    '--n',
    String(n),
    '--threads',
    String(threads),
    '--em-steps',
    String(few.em),
    '--pc-steps',
    String(few.pc),
    '--rtol',
    String(rtol),
    '--bpd-rtol',
    String(rtol),
  ];
  const r = spawnSync('/usr/bin/python3', args, { encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || r.error?.message || 'failed').trim().split('\n').pop() };
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

// `node dist/bench/sampling.js [--quick]` runs it alone.
if (process.argv[1]?.endsWith('/bench/sampling.js')) {
  const quick = process.argv.includes('--quick');
  process.stdout.write(JSON.stringify(await benchSampling({ quick }), null, 2) + '\n');
}
