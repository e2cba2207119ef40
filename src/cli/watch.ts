/**
 * `--eval-every` on the cluster. The coordinator never computes: at the first checkpoint at or
 * after each multiple of N it copies the checkpoint to DIR/eval/.ckpt-K.safetensors and starts
 * `scoreflow watch` (hidden) on it as a child process, which scores the EMA weights
 * (core/eval/watch.ts) and prints the record; the coordinator logs it in train.jsonl and sets the
 * eval gauges. One evaluation at a time: a checkpoint due while one runs is skipped (and said).
 * The child competes with the workers for the CPU; training does not wait for it.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { watchStep, type WatchRecord } from '../core/eval/watch.js';
import { packagePath } from '../core/paths.js';
import { loadScoreModel } from '../core/score/net.js';
import { backendOption, deviceOption, noteUnverified, parseFloatArg, parseIntArg, startBackend } from './common.js';

export interface WatchFlags {
  evalImages: number;
  evalSamples: number;
  evalTol: number;
}

export class CheckpointWatcher {
  private next: number;
  private running: Promise<void> | undefined;
  /** The latest checkpoint that came due while an evaluation ran (its copy): done next. */
  private pending: { step: number; copy: string } | undefined;

  constructor(
    private readonly out: string,
    private readonly every: number,
    private readonly flags: WatchFlags & { backend: string },
    private readonly log: (line: string) => void,
    private readonly onRecord: (r: WatchRecord) => void,
    startStep = 0,
  ) {
    this.next = (Math.floor(startStep / every) + 1) * every;
  }

  /** A checkpoint of `step` was written at `path` (relative to the run directory, or absolute). Never throws: the run goes on. */
  checkpoint(step: number, path: string): void {
    try {
      this.start(step, resolve(this.out, path));
    } catch (e) {
      this.log(`coordinator: eval of step ${step} not started: ${(e as Error).message}`);
    }
  }

  private start(step: number, path: string): void {
    if (step < this.next) return;
    this.next = (Math.floor(step / this.every) + 1) * this.every;
    const dir = join(this.out, 'eval');
    mkdirSync(dir, { recursive: true });
    const copy = join(dir, `.ckpt-${step}.safetensors`);
    copyFileSync(path, copy);
    if (this.running) {
      if (this.pending) {
        this.log(`coordinator: eval of step ${this.pending.step} skipped: step ${step} came due while another evaluation ran`);
        rmSync(this.pending.copy, { force: true });
      }
      this.pending = { step, copy };
      return;
    }
    this.run(step, copy);
  }

  private run(step: number, copy: string): void {
    this.running = this.evaluate(step, copy)
      .catch((e: unknown) => this.log(`coordinator: eval of step ${step} failed: ${(e as Error).message}`))
      .finally(() => {
        rmSync(copy, { force: true });
        this.running = undefined;
        const p = this.pending;
        this.pending = undefined;
        if (p) this.run(p.step, p.copy);
      });
  }

  private async evaluate(step: number, ckpt: string): Promise<void> {
    const args = [packagePath('bin', 'scoreflow.js'), 'watch', '--ckpt', ckpt, '--step', String(step), '--out', this.out];
    args.push('--eval-images', String(this.flags.evalImages), '--eval-samples', String(this.flags.evalSamples));
    args.push('--eval-tol', String(this.flags.evalTol), '--backend', this.flags.backend, '--threads', '1');
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b));
    child.stderr.on('data', (b: Buffer) => (stderr += b));
    const code = await new Promise<number | null>((res) => child.once('close', res));
    if (code !== 0) {
      this.log(`coordinator: eval of step ${step} failed: ${stderr.trim().split('\n').pop() ?? `exit ${code}`}`);
      return;
    }
    const r = JSON.parse(stdout) as WatchRecord;
    this.log(`coordinator: eval at step ${step}: ${r.bpd.toFixed(3)} ± ${r.bpd_stderr.toFixed(3)} bits/dim, ${r.png}`);
    this.onRecord(r);
  }

  /** Waits for the evaluation in flight and the one pending, if any. */
  async drain(): Promise<void> {
    while (this.running) await this.running;
  }
}

interface WatchCommandFlags extends WatchFlags {
  ckpt: string;
  step: number;
  out: string;
  backend: string;
  device?: string;
  threads?: number;
}

async function watch(f: WatchCommandFlags): Promise<void> {
  await startBackend(f);
  const model = loadScoreModel(f.ckpt, { ema: true });
  noteUnverified('watch', f.ckpt, model.unverified);
  try {
    const r = await watchStep(model, f.step, f.out, { images: f.evalImages, samples: f.evalSamples, tol: f.evalTol });
    process.stdout.write(JSON.stringify(r) + '\n');
  } finally {
    model.dispose();
  }
}

export function registerWatch(program: Command): void {
  program
    .command('watch', { hidden: true })
    .description('score one checkpoint as --eval-every does (bits/dim + sample grid under <out>/eval/); prints the record')
    .requiredOption('--ckpt <path>', 'training checkpoint')
    .requiredOption('--step <k>', 'the step it holds (names the files)', parseIntArg(0))
    .requiredOption('--out <dir>', 'run directory')
    .option('--eval-images <n>', 'test images for bits/dim', parseIntArg(1, 10_000), 64)
    .option('--eval-samples <n>', 'Heun samples in the grid', parseIntArg(1, 10_000), 64)
    .option('--eval-tol <r>', 'RK45 rtol = atol of the bits/dim', parseFloatArg({ exclusiveMin: 0, max: 1 }), 1e-5)
    .addOption(backendOption())
    .addOption(deviceOption())
    .option('--threads <t>', 'compute threads', parseIntArg(1, 1024))
    .action((f: WatchCommandFlags) => watch(f));
}
