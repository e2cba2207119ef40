/**
 * Shared CLI plumbing. The CLI is the only layer that turns errors into exit codes:
 * every failure is one line on stderr (`<prog>: <message>`) and a non-zero exit.
 */
import { existsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { BACKEND_NAMES, type BackendName, initBackend } from '../core/backend/index.js';

export function parseIntArg(min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer >= ${min}, got '${v}'`);
    return n;
  };
}

export function parseFloatArg(opts: { min?: number; exclusiveMin?: number; max?: number } = {}) {
  return (v: string): number => {
    const x = Number(v);
    const bad =
      v.trim() === '' ||
      !Number.isFinite(x) ||
      (opts.min !== undefined && x < opts.min) ||
      (opts.exclusiveMin !== undefined && x <= opts.exclusiveMin) ||
      (opts.max !== undefined && x > opts.max);
    if (bad) {
      const range = [opts.min !== undefined ? `>= ${opts.min}` : '', opts.exclusiveMin !== undefined ? `> ${opts.exclusiveMin}` : '', opts.max !== undefined ? `<= ${opts.max}` : '']
        .filter(Boolean)
        .join(' and ');
      throw new InvalidArgumentError(`expected a number${range ? ' ' + range : ''}, got '${v}'`);
    }
    return x;
  };
}

export function parseChannels(v: string): [number, number, number, number] {
  const parts = v.split(',').map((s) => Number(s.trim()));
  if (parts.length !== 4 || parts.some((c) => !Number.isInteger(c) || c < 1)) {
    throw new InvalidArgumentError(`expected four positive integers like 32,64,128,256, got '${v}'`);
  }
  return parts as [number, number, number, number];
}

/** Throws one line when the folder that `out` would be written into does not exist. */
export function checkOutDir(flag: string, out: string): void {
  const dir = dirname(out);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`${flag}: directory '${dir}' does not exist`);
}

export function backendOption(): Option {
  return new Option('--backend <name>', 'tensor backend').choices(BACKEND_NAMES as unknown as string[]).default('auto');
}

export function deviceOption(): Option {
  return new Option('--device <device>', "torch device: 'cpu' or 'cuda:i'");
}

/**
 * Start the chosen backend, logging the choice to stderr. `threads` is the compute threads of
 * this process: libtorch's intra-op threads on torch; on wasm/cpu, which run one thread per
 * instance, the GradPool's worker threads (see poolThreads).
 */
export async function startBackend(opts: { backend: string; device?: string; threads?: number }): Promise<string> {
  return initBackend(opts.backend as BackendName, { device: opts.device, threads: opts.threads, log: (line) => process.stderr.write(line + '\n') });
}

export { poolThreads } from '../core/train/pool.js';

/** A program whose parse errors are one line and a non-zero exit. */
export function newProgram(name: string, description: string): Command {
  return new Command(name)
    .description(description)
    .showHelpAfterError(false)
    .configureOutput({ outputError: (str, write) => write(`${name}: ${str.replace(/^error: /, '').trim()}\n`) })
    .exitOverride((err) => {
      // help and version are "errors" with exit code 0
      process.exit(err.exitCode === 0 ? 0 : 2);
    });
}

/** Run a program; any thrown error becomes one line on stderr and exit code 1. */
export async function main(program: Command): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`${program.name()}: ${msg.split('\n')[0]}\n`);
    if (process.env.SCOREFLOW_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
    process.exit(1);
  }
}
