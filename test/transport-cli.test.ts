/**
 * Choosing the gradient transport from the command line: an unknown or unavailable
 * transport is one line before anything starts, and a worker that cannot take part in the
 * run's transport is refused with one line on both sides (and nothing is trained).
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { c10dInfo } from '../src/worker/collective/process-group.js';
import { errorLines, runBin, spawnBin, tempDir } from './helpers/cli.js';
import { startNats, type NatsServer } from './helpers/nats.js';

const SYN = JSON.stringify({ params: 1000, samples: 64, seed: 1, lr: 0.01 });
const base = (out: string) => ['start', '--steps', '3', '--batch-size', '4', '--synthetic', SYN, '--out', out];

describe('--transport', () => {
  let server: NatsServer;
  before(async () => (server = await startNats()));
  after(async () => server?.close());

  it('unknown: one line naming the choices, nothing written', () => {
    const out = join(tempDir(), 'run');
    const r = runBin('coordinator', [...base(out), '--transport', 'mpi'], { timeoutMs: 30_000 });
    assert.notEqual(r.code, 0);
    const lines = errorLines(r.stderr);
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /--transport.*mpi.*(auto|nats|gloo|nccl)/);
    assert.ok(!existsSync(out));
  });

  it('nccl without CUDA (and gloo where the addon lacks it): one line saying why, nothing started', () => {
    const info = c10dInfo();
    assert.equal(info.gloo, true, `this machine's addon must have c10d Gloo (install libgloo-dev, rebuild): ${info.why}`);
    assert.equal(info.nccl, false, 'this test expects a libtorch without CUDA');
    const out = join(tempDir(), 'run');
    const r = runBin('coordinator', [...base(out), '--gpus', '2', '--transport', 'nccl'], { timeoutMs: 30_000 });
    assert.notEqual(r.code, 0);
    assert.deepEqual(errorLines(r.stderr), [`coordinator: --transport nccl is unavailable here: ${info.why}`]);
    assert.ok(!existsSync(out) || readdirSync(out).length === 0, 'the refused run left files');
  });

  it('a worker without c10d asked into a gloo run is refused: one line on each side, no step taken', async () => {
    const out = join(tempDir(), 'run');
    const coord = spawnBin('coordinator', [...base(out), '--no-spawn', '--nats', server.url, '--run', 'refuse', '--transport', 'gloo']);
    let cout = '';
    coord.stderr!.on('data', (b) => (cout += b));
    try {
      const w = runBin('worker', ['start', '--nats', server.url, '--run', 'refuse', '--id', 'plain', '--no-c10d', '--backend', 'cpu'], {
        timeoutMs: 60_000,
      });
      assert.notEqual(w.code, 0);
      assert.deepEqual(
        errorLines(w.stderr).filter((l) => /refused|stopped/.test(l)),
        ['worker plain: run stopped: refused: the run uses --transport gloo, the worker offers nats'],
      );
      // (runBin blocked this process's event loop: let the coordinator's output in)
      for (let i = 0; i < 100 && !/refused/.test(cout); i++) await sleep(50);
      assert.match(cout, /worker plain refused: the run uses --transport gloo, the worker offers nats/);
      assert.ok(!existsSync(join(out, 'train.jsonl')), 'a step was taken');
    } finally {
      coord.kill('SIGTERM');
      await new Promise((r) => coord.once('exit', r));
    }
  });
});
