import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packagePath } from '../../src/core/paths.js';

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run one of the package's bin scripts to completion. */
export function runBin(
  bin: 'scoreflow' | 'coordinator' | 'worker',
  args: string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): CliResult {
  const r = spawnSync(process.execPath, [packagePath('bin', `${bin}.js`), ...args], {
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 300_000,
    env: { ...process.env, ...opts.env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Start a bin script in the background. */
export function spawnBin(bin: 'scoreflow' | 'coordinator' | 'worker', args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawn(process.execPath, [packagePath('bin', `${bin}.js`), ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** The tiny ScoreNet of the CLI tests (a few seconds a run on wasm). */
export const TINY_NET = ['--channels', '8,16,16,16', '--embed-dim', '16'];

export function tempDir(prefix = 'scoreflow-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** The stderr lines that are not the backend banner or tfjs's advice. */
export function errorLines(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter(
      (l) =>
        l.trim() !== '' && !l.startsWith('backend: ') && !/^=+$/.test(l) && !l.includes('tfjs-node') && !l.startsWith('Hi, looks like'),
    );
}
