/**
 * `npm run bench`: prints one JSON object with this machine's figures beside the PyTorch
 * reference run in the same session. Flags: --quick (fewer repetitions), --only a,b (sections:
 * torch, core, sampling, cluster, collective, fanout, leak; default all), --backends torch,wasm,...,
 * --threads 1,2 (the thread counts for torch and for PyTorch), --device cuda:0 (torch's device),
 * --leak-steps N (default 1000). `--only variance --ckpt PATH` (not in the default list): the
 * likelihood recipe's importance sampling against uniform t (bench/variance.ts).
 *
 * The PyTorch reference: reference/torch_baseline.py (CPU) by default; with a CUDA --device, or
 * --device-baseline, reference/torch_baseline_device.py on that same device instead (both import
 * the model from their own folder). --reference-dir DIR takes both from another copy of that folder
 * (default the package's reference/; also $SCOREFLOW_REFERENCE_DIR; scripts/device-bench.sh passes
 * .device/reference), --baseline FILE names the CPU script outright, --python PATH the interpreter
 * (default /usr/bin/python3, Debian's, which has torch).
 */
import { spawnSync } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { benchCluster } from './cluster.js';
import { benchCollective } from './collective.js';
import { benchCore, leakCheck } from './core.js';
import { benchFanout } from './fanout.js';
import { benchSampling } from './sampling.js';
import { benchVariance } from './variance.js';
import { packagePath } from '../src/core/paths.js';
import type { BackendName } from '../src/core/backend/index.js';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const quick = process.argv.includes('--quick');
const only = new Set((flag('--only') ?? 'torch,core,sampling,cluster,collective,fanout,leak').split(','));
const backends = (flag('--backends') ?? 'torch,wasm').split(',') as BackendName[];
const log = (line: string) => process.stderr.write(`bench: ${line}\n`);

const threadCounts = (flag('--threads') ?? '1,2').split(',').map(Number);
const device = flag('--device');
const python = flag('--python') ?? '/usr/bin/python3';
const referenceDir = resolve(flag('--reference-dir') ?? process.env.SCOREFLOW_REFERENCE_DIR ?? packagePath('reference'));
/** On a GPU, PyTorch on that GPU: our figures there over PyTorch's on the CPU would mean nothing. */
const deviceBaseline = process.argv.includes('--device-baseline') || (device ?? '').startsWith('cuda');

/**
 * The PyTorch baseline, with Debian's python3 (the one that sees python3-torch) unless --python.
 * OMP_WAIT_POLICY is PASSIVE as for our torch backend: spinning OpenMP threads collapse on a
 * shared 2-core box.
 */
export function torchBaseline(batch: number, threads: number): Record<string, unknown> {
  const common = ['--batch', String(batch), '--threads', String(threads), ...(quick ? ['--quick'] : [])];
  const args = deviceBaseline
    ? [join(referenceDir, 'torch_baseline_device.py'), ...common, '--device', device ?? 'cpu']
    : [flag('--baseline') ?? join(referenceDir, 'torch_baseline.py'), ...common];
  const r = spawnSync(python, args, {
    encoding: 'utf8',
    env: { ...process.env, OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? 'PASSIVE' },
  });
  if (r.status !== 0) return { error: (r.stderr || r.error?.message || 'failed').trim().split('\n').pop() };
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

const result: Record<string, unknown> = {
  machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model, memory_gib: Math.round(totalmem() / 2 ** 30), node: process.version },
  date: new Date().toISOString(),
  device: device ?? 'cpu',
};

type Figures = {
  train_images_per_s?: Record<string, number>;
  sample_forward_images_per_s?: number;
  likelihood_fe_images_per_s?: number;
  error?: string;
};
type Baseline = { train_images_per_s?: number; sample_forward_images_per_s?: number; likelihood_fe_images_per_s?: number };

/** Our figures over PyTorch's at the same thread count (batch 128 training against PyTorch's batch-128 run). */
function ratios(ours: Figures, pt32: Baseline, pt128: Baseline): Record<string, number> | undefined {
  if (!ours.train_images_per_s || !pt32.train_images_per_s || !pt128.train_images_per_s) return undefined;
  return {
    train_batch_32: ours.train_images_per_s.batch_32 / pt32.train_images_per_s,
    train_batch_128: ours.train_images_per_s.batch_128 / pt128.train_images_per_s,
    forward_64: (ours.sample_forward_images_per_s ?? 0) / (pt32.sample_forward_images_per_s ?? NaN),
    forward_input_grad_64: (ours.likelihood_fe_images_per_s ?? 0) / (pt32.likelihood_fe_images_per_s ?? NaN),
  };
}

async function tryBench(b: BackendName, threads?: number): Promise<Figures> {
  try {
    return (await benchCore(b, { threads, reps: quick ? 2 : 20, device: b === 'torch' ? device : undefined })) as Figures;
  } catch (e) {
    return { error: (e as Error).message };
  }
}

const pytorch: Record<string, { batch_32: Baseline; batch_128: Baseline }> = {};
if (only.has('torch')) {
  for (const th of threadCounts) {
    log(
      `PyTorch reference (${deviceBaseline ? `torch_baseline_device.py on ${device ?? 'cpu'}` : 'torch_baseline.py'}), ${th} thread(s), batch 32 and 128`,
    );
    pytorch[`threads_${th}`] = { batch_32: torchBaseline(32, th), batch_128: torchBaseline(128, th) };
  }
  result.pytorch = pytorch;
  result.pytorch_baseline = deviceBaseline
    ? { script: join(referenceDir, 'torch_baseline_device.py'), device: device ?? 'cpu', reference_dir: referenceDir, python }
    : { script: flag('--baseline') ?? join(referenceDir, 'torch_baseline.py'), device: 'cpu', python };
}
if (only.has('core')) {
  const core: Record<string, Figures> = {};
  const ratio: Record<string, unknown> = {};
  for (const b of backends) {
    // torch is multi-threaded: measure it at each thread count, beside PyTorch at the same count;
    // wasm and cpu use one GradPool thread per core for training, one instance for the rest.
    for (const th of b === 'torch' ? threadCounts : [undefined]) {
      const key = th === undefined ? b : `${b}_threads_${th}`;
      log(`core figures on ${key}`);
      core[key] = await tryBench(b, th);
      const pt = pytorch[`threads_${th ?? Math.max(...threadCounts)}`];
      const r = pt && ratios(core[key], pt.batch_32, pt.batch_128);
      if (r) ratio[key] = r;
    }
  }
  result.core = core;
  result.ratio_to_pytorch = ratio;
}
/** A section that fails reports its error instead of ending the run. */
async function section(name: string, f: () => Promise<unknown>): Promise<void> {
  if (!only.has(name)) return;
  log(`${name} ...`);
  try {
    result[name] = await f();
  } catch (e) {
    result[name] = { error: (e as Error).message };
  }
}

await section('sampling', async () => {
  const out: Record<string, unknown> = {};
  for (const b of backends) out[b] = await benchSampling({ quick, backend: b }).catch((e: Error) => ({ error: e.message }));
  return out;
});
await section('cluster', () => benchCluster({ quick, log }));
await section('collective', () => benchCollective({ quick, log, python, referenceDir }));
await section('fanout', () => benchFanout({ quick, log }));
// not in the default list: it needs a trained checkpoint (--ckpt)
await section('variance', () => {
  const ckpt = flag('--ckpt');
  if (!ckpt) throw new Error('--only variance needs --ckpt PATH (a trained checkpoint)');
  return benchVariance({ ckpt, backend: backends[0], quick });
});
if (only.has('leak')) {
  const steps = Number(flag('--leak-steps') ?? 1000);
  log(`leak check: ${steps} training steps on ${backends[0]}`);
  result.leak = await leakCheck(backends[0], steps);
}
process.stdout.write(JSON.stringify(result, null, 2) + '\n');
