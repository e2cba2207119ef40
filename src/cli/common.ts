/**
 * Shared CLI plumbing. The CLI is the only layer that turns errors into exit codes:
 * every failure is one line on stderr (`<prog>: <message>`) and a non-zero exit.
 */
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { BACKEND_NAMES, type BackendName, initBackend } from '../core/backend/index.js';
import { cleanAtomicTemps, describeError } from '../core/io/atomic.js';

/** An integer flag in [min, max] (max: a plausible bound, so a slip of the keyboard is caught here, not hours later). */
export function parseIntArg(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected an integer >= ${min}${max < Number.MAX_SAFE_INTEGER ? ` and <= ${max}` : ''}, got '${v}'`);
    }
    return n;
  };
}

/** A TCP port, 0 (any free one) to 65535. */
export function parsePort(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || n > 65535)
    throw new InvalidArgumentError(`expected a TCP port from 0 to 65535 (0: any free one), got '${v}'`);
  return n;
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
      const range = [
        opts.min !== undefined ? `>= ${opts.min}` : '',
        opts.exclusiveMin !== undefined ? `> ${opts.exclusiveMin}` : '',
        opts.max !== undefined ? `<= ${opts.max}` : '',
      ]
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

/** Throws one line when the folder that `out` would be written into does not exist or is not writable. */
export function checkOutDir(flag: string, out: string): void {
  const dir = dirname(out);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`${flag}: directory '${dir}' does not exist`);
  checkWritable(flag, out, dir);
}

function checkWritable(flag: string, out: string, dir: string): void {
  try {
    // access(2) answers EROFS on a read-only file system even for root, EACCES on permissions.
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (e) {
    throw new Error(`${flag} ${out}: not writable: ${dir} refuses new files (${describeError(e)}); choose another ${flag}`);
  }
}

/**
 * Throws one line unless directory `dir` exists and is writable, or can be created: the
 * nearest existing ancestor must be a writable directory. Nothing is created here.
 */
export function checkOutputDir(flag: string, dir: string): void {
  let at = resolve(dir);
  while (!existsSync(at)) {
    const up = dirname(at);
    if (up === at) break;
    at = up;
  }
  if (!statSync(at).isDirectory()) throw new Error(`${flag} ${dir}: ${at} is not a directory; choose another ${flag}`);
  checkWritable(flag, dir, at);
}

/** Removes temp files of atomic writes that killed processes left in `dir` (see atomic.ts), saying so on stderr. */
export function removeStaleTemps(prog: string, dir: string): void {
  if (!existsSync(dir)) return;
  // Called before this command has written anything: temps with our own pid are a dead predecessor's.
  for (const p of cleanAtomicTemps(dir, { ownAreStale: true }))
    process.stderr.write(`${prog}: removed ${p}, the temp file of a write that never finished\n`);
}

const noted = new Set<string>();

/** Says once per file that a scoreflow checkpoint without a data digest was loaded unverified. */
export function noteUnverified(prog: string, path: string, unverified: boolean): void {
  if (!unverified || noted.has(path)) return;
  noted.add(path);
  process.stderr.write(
    `${prog}: note: ${path} has no data digest (written before checkpoints carried one); loaded without verifying its bytes\n`,
  );
}

export function backendOption(): Option {
  return new Option('--backend <name>', 'tensor backend').choices(BACKEND_NAMES as unknown as string[]).default('auto');
}

export function deviceOption(): Option {
  return new Option('--device <device>', "torch device: 'cpu' or 'cuda:i'");
}

/** --threads of a command that runs one model on one process (classifier, evaluate). */
export function threadsOption(): Option {
  return new Option(
    '--threads <t>',
    'libtorch intra-op threads on torch (default: the cores this process may use: its affinity, capped by its cgroup CPU limit)',
  ).argParser(parseIntArg(1));
}

/**
 * Start the chosen backend, logging the choice to stderr. `threads` is the compute threads of
 * this process: libtorch's intra-op threads on torch; on wasm/cpu, which run one thread per
 * instance, the GradPool's worker threads (see poolThreads).
 */
export async function startBackend(opts: { backend: string; device?: string; threads?: number }): Promise<string> {
  return initBackend(opts.backend as BackendName, {
    device: opts.device,
    threads: opts.threads,
    log: (line) => process.stderr.write(line + '\n'),
  });
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

/** An error whose line was already written to stderr: exit 1 without writing it again. */
export class AlreadySaid extends Error {}

/** Run a program; any thrown error becomes one line on stderr and exit code 1. */
export async function main(program: Command): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (e) {
    if (e instanceof AlreadySaid) {
      if (process.env.SCOREFLOW_DEBUG) process.stderr.write(`${e.stack}\n`);
      process.exit(1);
    }
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`${program.name()}: ${msg.split('\n')[0]}\n`);
    if (process.env.SCOREFLOW_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
    process.exit(1);
  }
}
