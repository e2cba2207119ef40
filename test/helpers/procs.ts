/**
 * Real `coordinator` / `worker` processes for the recovery and chaos tests: start one with its
 * output collected, read the steps its train.jsonl holds, find the workers a coordinator
 * spawned, wait for a condition.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { packagePath } from '../../src/core/paths.js';

export interface Proc {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

/** `bin/NAME.js ARGS` (or `prefix... node bin/NAME.js ARGS`), stdout and stderr collected together; stdin closed unless 'pipe'. */
export function startBin(
  name: string,
  args: string[],
  opts: { env?: Record<string, string>; root?: string; prefix?: string[]; stdin?: 'ignore' | 'pipe' } = {},
): Proc {
  const script = opts.root ? join(opts.root, 'bin', `${name}.js`) : packagePath('bin', `${name}.js`);
  const argv = [...(opts.prefix ?? []), process.execPath, script, ...args];
  const child = spawn(argv[0], argv.slice(1), { env: { ...process.env, ...opts.env }, stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (b) => (out += b));
  child.stderr!.on('data', (b) => (out += b));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, output: () => out, exited };
}

/** Steps logged so far, in file order, from a run directory's train.jsonl (or `file`: log.jsonl of `scoreflow train`); a torn line throws. */
export function logged(dir: string, file = 'train.jsonl'): number[] {
  return loggedEntries(dir, file).map((e) => e.step);
}

export function loggedEntries(dir: string, file = 'train.jsonl'): { step: number; workers: number }[] {
  const p = join(dir, file);
  if (!existsSync(p)) return [];
  return readFileSync(p, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { step: number; workers: number });
}

/** from, from + 1, ..., to - 1. */
export const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

/** Polls `f` every `every` ms until it holds; after `ms`, fails naming `what`. */
export async function until(f: () => boolean, ms: number, what: string, every = 25): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(every);
  }
}

/** Poll `f` until it returns a value other than undefined; on timeout fail with `what` and its last error. */
export async function poll<T>(what: () => string, ms: number, f: () => Promise<T | undefined> | T | undefined, every = 250): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end)
      throw new Error(`timed out after ${ms / 1000} s waiting for ${what()}${last ? `\nlast error: ${(last as Error).message}` : ''}`);
    await sleep(every);
  }
}

/** Pids of the live processes whose command line holds `--id ID` (a spawned worker, found by its id). */
export function pidsOfWorker(id: string): number[] {
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      const i = argv.indexOf('--id');
      // (the node process itself, not a setpriv wrapper that has not exec'd yet)
      if (i > 0 && argv[i + 1] === id && argv.some((a) => a.endsWith('worker.js')) && argv[0] === process.execPath) pids.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}
