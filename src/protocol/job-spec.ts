/**
 * What a task asks of the workers (carried as JSON in every Job) and how it is cut into jobs.
 *
 * Job boundaries fall on multiples of the batch size, counted from index 0, so every worker
 * evaluates exactly the batches the single-process `scoreflow sample` / `scoreflow likelihood`
 * would with the same --batch-size. The samplers and the likelihood are per item by design
 * (per-sample RK45 step control, per-sample PC norms, noise from (seed, i)), but a network is
 * only batch-invariant bit for bit if its kernels are: XNNPACK (wasm) is, as measured, while
 * libtorch or cuDNN may pick another algorithm for another batch shape. With aligned batches
 * the outputs are byte-identical to the single-process run whatever the backend's kernels do.
 */
import type { Dequantisation, DivergenceMode } from '../core/likelihood.js';
import { SAMPLE_DEFAULTS, type SampleOptions } from '../core/sampling/index.js';

export interface SampleSpec {
  kind: 'sample';
  /** Checkpoint path as the workers see it (absolute; workers must share the file system or a volume). */
  ckpt: string;
  raw: boolean;
  /** Sampler options (no callbacks, no latent values: those are the `latent` file). */
  options: Omit<SampleOptions, 'onProgress' | 'latent'>;
  /** An .npy of latents x(1) (ode), read by each worker. */
  latent?: string;
}

export interface LikelihoodSpec {
  kind: 'likelihood';
  ckpt: string;
  raw: boolean;
  /** A data set name or an absolute path, and --limit, as loadImages takes them. */
  data: string;
  limit?: number;
  options: {
    seed: number;
    hutchinson: DivergenceMode;
    probes: number;
    rtol: number;
    atol: number;
    eps: number;
    batchSize: number;
    /** Absent in specs from before it existed: uniform. */
    dequantise?: Dequantisation;
  };
}

export type TaskSpec = SampleSpec | LikelihoodSpec;

export interface JobRange {
  index: number;
  from: number;
  to: number;
}

/**
 * [0, n) cut into jobs of `batchesPerJob` whole batches (the last job takes the remainder).
 * Throws on n < 1: an empty task is a user error, said once here.
 */
export function planJobs(n: number, batchSize: number, batchesPerJob = 1): JobRange[] {
  if (!(Number.isSafeInteger(n) && n >= 1)) throw new Error(`nothing to do: ${n} items (need at least 1)`);
  if (!(Number.isSafeInteger(batchSize) && batchSize >= 1)) throw new Error(`batch size must be a positive integer, got ${batchSize}`);
  if (!(Number.isSafeInteger(batchesPerJob) && batchesPerJob >= 1))
    throw new Error(`batches per job must be a positive integer, got ${batchesPerJob}`);
  const size = batchSize * batchesPerJob;
  const jobs: JobRange[] = [];
  for (let from = 0; from < n; from += size) jobs.push({ index: jobs.length, from, to: Math.min(n, from + size) });
  return jobs;
}

/** The batch size a spec's ranges are aligned to. */
export function batchSizeOf(spec: TaskSpec): number {
  return spec.options.batchSize ?? SAMPLE_DEFAULTS.batchSize;
}
