/**
 * The cluster as users run it: `coordinator start` and `worker start` processes on a real
 * nats-server. End to end with the real Trainer (bitwise equal to `scoreflow train
 * --threads 2`), a worker SIGKILLed at a random moment, the coordinator SIGKILLed and
 * restarted on its run directory. The fault runs use the synthetic objective so that
 * the final parameters can be checked against an uninterrupted run in a few seconds.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { packagePath } from '../src/core/paths.js';
import { loadTrainingCheckpoint } from '../src/core/train/checkpoint.js';
import { SyntheticReplica, SYNTHETIC_DEFAULTS, type SyntheticConfig } from '../src/worker/synthetic.js';
import { tempDir, TINY_NET } from './helpers/cli.js';
import { startNats, type NatsServer } from './helpers/nats.js';
import { logged, range, startBin, until, type Proc } from './helpers/procs.js';
import { assertCheckpointMatches, syntheticReference } from './helpers/synthetic.js';

const exec = promisify(execFile);
const bin = (name: string) => packagePath('bin', `${name}.js`);

const SYN: SyntheticConfig = { ...SYNTHETIC_DEFAULTS, params: 20_000, batchSize: 12, computeMs: 40 };
const STEPS = 40;

const coordArgs = (dir: string, url: string, extra: string[] = []) => [
  'start',
  '--no-spawn',
  '--nats',
  url,
  '--run',
  'proc',
  '--out',
  dir,
  '--steps',
  String(STEPS),
  '--batch-size',
  String(SYN.batchSize),
  '--synthetic',
  JSON.stringify(SYN),
  '--heartbeat-timeout',
  '1000',
  '--ckpt-every',
  '8',
  '--checksum-every',
  '4',
  ...extra,
];
const workerArgs = (url: string, i: number) => [
  'start',
  '--nats',
  url,
  '--run',
  'proc',
  '--id',
  `p${i}`,
  '--backend',
  'cpu',
  '--heartbeat-ms',
  '200',
];

describe('cluster processes', () => {
  let server: NatsServer;
  let ref: SyntheticReplica;
  const procs: Proc[] = [];
  before(async () => {
    server = await startNats();
    ref = syntheticReference(SYN, STEPS);
  });
  after(async () => {
    for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    await server?.close();
  });

  for (const [k, transport] of (['nats', 'auto'] as const).entries()) {
    const offset = 100 * k; // worker ids of one transport's runs never meet the other's
    // The quick start's cluster: on wasm `--threads 2` computes as 2 one-thread workers do; on
    // torch (intra-op threads) only `--shards 2` does, here with the quick start's recipe.
    for (const [backend, single, recipe] of [
      ['wasm', '--threads', 'seed'],
      ['torch', '--shards', 'fast'],
    ] as const)
      it(`coordinator start --gpus 2 --transport ${transport} on ${backend} trains end to end, bitwise equal to scoreflow train ${single} 2 (${recipe} recipe)`, async () => {
        const flags = [
          '--recipe',
          recipe,
          ...TINY_NET,
          '--limit',
          '64',
          '--batch-size',
          '8',
          '--steps',
          '3',
          '--seed',
          '5',
          '--backend',
          backend,
        ];
        const [a, b] = [tempDir(), tempDir()];
        await exec(process.execPath, [bin('scoreflow'), 'train', ...flags, single, '2', '--out', a]);
        const c = startBin('coordinator', ['start', '--gpus', '2', ...flags, '--threads', '1', '--transport', transport, '--out', b]);
        procs.push(c);
        assert.equal(await c.exited, 0, c.output());
        assert.match(c.output(), /found 0 GPU\(s\): running 2 worker\(s\) on the CPU|GPU/);
        // auto takes gloo on this machine (every worker's addon has c10d Gloo) and says why
        const why =
          transport === 'auto'
            ? "gloo, in buckets of 1024 KiB during the backward pass: every member's torch addon has c10d Gloo"
            : 'nats: --transport';
        assert.ok(c.output().includes(`coordinator: gradients over ${why}`), c.output());
        const x = loadTrainingCheckpoint(join(a, 'checkpoint.safetensors')).state;
        const y = loadTrainingCheckpoint(join(b, 'checkpoint.safetensors')).state;
        assert.equal(y.step, 3);
        for (const k of ['params', 'm', 'v', 'ema'] as const) assert.deepEqual(y[k], x[k], k);
      });

    it(`${transport}: a worker SIGKILLed at a random moment (mid-step or mid-collective): its step is re-planned, no step lost or applied twice`, async () => {
      const dir = tempDir();
      const c = startBin('coordinator', coordArgs(dir, server.url, ['--min-workers', '3', '--transport', transport]));
      const ws = [0, 1, 2].map((i) => startBin('worker', workerArgs(server.url, i + offset)));
      procs.push(c, ...ws);
      await until(() => logged(dir).length >= 4 + Math.floor(Math.random() * 8), 90_000, 'the first steps');
      await sleep(Math.random() * 60);
      ws[1].child.kill('SIGKILL');
      assert.equal(await c.exited, 0, c.output());
      assert.match(c.output(), new RegExp(`worker p${1 + offset} removed: no heartbeat`));
      assert.deepEqual(
        logged(dir),
        range(0, STEPS),
        'every step logged once, in order (a restart cuts train.jsonl back to its checkpoint before replaying)',
      );
      assertCheckpointMatches(dir, ref);
      assert.equal(await ws[0].exited, 0);
      assert.equal(await ws[2].exited, 0);
    });

    it(`${transport}: the coordinator SIGKILLed and restarted on its run directory resumes; workers re-attach`, async () => {
      const dir = tempDir();
      const c1 = startBin('coordinator', coordArgs(dir, server.url, ['--min-workers', '2', '--transport', transport]));
      const ws = [0, 1].map((i) => startBin('worker', workerArgs(server.url, 10 + i + offset)));
      procs.push(c1, ...ws);
      await until(() => logged(dir).length >= 12 + Math.floor(Math.random() * 6), 90_000, 'steps past the first checkpoint');
      c1.child.kill('SIGKILL');
      await c1.exited;
      const before = logged(dir);
      const c2 = startBin('coordinator', coordArgs(dir, server.url, ['--transport', transport]));
      procs.push(c2);
      assert.equal(await c2.exited, 0, c2.output());
      assert.match(c2.output(), /resuming run proc from its checkpoint at step (8|16)/);
      const resumedAt = Number(/checkpoint at step (\d+)/.exec(c2.output())![1]);
      assert.ok(before.length >= resumedAt);
      assert.deepEqual(
        logged(dir),
        range(0, STEPS),
        'every step logged once, in order (a restart cuts train.jsonl back to its checkpoint before replaying)',
      );
      assertCheckpointMatches(dir, ref);
      for (const w of ws) assert.equal(await w.exited, 0);
    });
  }
});
