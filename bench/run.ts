/**
 * `npm run bench`: prints one JSON object with this machine's figures beside the PyTorch
 * reference run in the same session. Flags: --quick (fewer repetitions), --only a,b (sections:
 * core, torch, sampling, cluster), --backends wasm,torch,...
 */
import { spawnSync } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { benchCore } from './core.js';
import { packagePath } from '../src/core/paths.js';
import type { BackendName } from '../src/core/backend/index.js';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const quick = process.argv.includes('--quick');
const only = new Set((flag('--only') ?? 'core,torch').split(','));
const backends = (flag('--backends') ?? 'torch,wasm').split(',') as BackendName[];
const log = (line: string) => process.stderr.write(`bench: ${line}\n`);

/** The PyTorch baseline, with Debian's python3 (the one that sees python3-torch). */
export function torchBaseline(batch: number): Record<string, unknown> {
  const script = packagePath('..', 'shared', 'reference', 'torch_baseline.py');
  const r = spawnSync('/usr/bin/python3', [script, '--batch', String(batch), ...(quick ? ['--quick'] : [])], { encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || r.error?.message || 'failed').trim().split('\n').pop() };
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

const result: Record<string, unknown> = {
  machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model, memory_gib: Math.round(totalmem() / 2 ** 30), node: process.version },
  date: new Date().toISOString(),
};

if (only.has('torch')) {
  log('PyTorch reference (torch_baseline.py) at batch 32 and 128');
  result.pytorch = { batch_32: torchBaseline(32), batch_128: torchBaseline(128) };
}
if (only.has('core')) {
  const core: Record<string, unknown> = {};
  for (const b of backends) {
    log(`core figures on ${b}`);
    try {
      core[b] = await benchCore(b, { reps: quick ? 2 : 5 });
    } catch (e) {
      core[b] = { error: (e as Error).message };
    }
  }
  result.core = core;
  const pt = result.pytorch as Record<string, Record<string, number>> | undefined;
  if (pt?.batch_32?.train_images_per_s) {
    const ratios: Record<string, unknown> = {};
    for (const [b, f] of Object.entries(core) as Array<[string, { train_images_per_s?: Record<string, number>; sample_forward_images_per_s?: number; likelihood_fe_images_per_s?: number }]>) {
      if (!f.train_images_per_s) continue;
      ratios[b] = {
        train_batch_32: f.train_images_per_s.batch_32 / pt.batch_32.train_images_per_s,
        train_batch_128: f.train_images_per_s.batch_128 / pt.batch_128.train_images_per_s,
        forward_64: (f.sample_forward_images_per_s ?? 0) / pt.batch_32.sample_forward_images_per_s,
        forward_input_grad_64: (f.likelihood_fe_images_per_s ?? 0) / pt.batch_32.likelihood_fe_images_per_s,
      };
    }
    result.ratio_to_pytorch = ratios;
  }
}
process.stdout.write(JSON.stringify(result, null, 2) + '\n');
