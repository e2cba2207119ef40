/**
 * The sampling/likelihood fan-out ([fanout]): `coordinator sample` / `coordinator likelihood`
 * give byte-identical samples and bits/dim for 1, 2 and 3 workers, with a worker SIGKILLed
 * mid-job, and equal to the single-process CLIs; a checkpoint that fails on the workers
 * fails the task once; empty input is one clear line. Plus the wire pieces on their own.
 * A tiny ScoreNet (trained 2 steps here) and few steps keep it quick; wasm throughout.
 */
import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { writeNpySync } from '../src/core/io/npy.js';
import { planJobs } from '../src/protocol/job-spec.js';
import {
  ResultAssembler,
  chunkResult,
  decodeJob,
  decodeResult,
  encodeJob,
  encodeResult,
  payloadValues,
  type JobResultChunk,
} from '../src/protocol/jobs.js';
import { toLEBytes } from '../src/core/io/endian.js';
import { runBin, spawnBin, tempDir, TINY_NET } from './helpers/cli.js';
import { startNats, type NatsServer } from './helpers/nats.js';

const dir = tempDir('scoreflow-fanout-');
const ckpt = join(dir, 'train', 'checkpoint.safetensors');
const SAMPLE = ['--sampler', 'em', '--steps', '30', '--n', '8', '--batch-size', '2', '--seed', '3', '--backend', 'wasm'];
const LIKELIHOOD = ['--limit', '6', '--batch-size', '2', '--rtol', '1e-1', '--atol', '1e-1', '--seed', '5', '--backend', 'wasm'];
const FAST = ['--ack-wait', '2'];

after(() => rmSync(dir, { recursive: true, force: true }));

/** The report without what legitimately differs between runs (timings, the fan-out's own account). */
function stable(path: string): string {
  const report = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  for (const k of ['seconds', 'seconds_per_image', 'fanout', 'files']) delete report[k];
  return JSON.stringify(report);
}

function ok(r: { code: number | null; stderr: string }, what: string): void {
  assert.equal(r.code, 0, `${what} failed:\n${r.stderr.split('\n').slice(-15).join('\n')}`);
}

describe('job wire', () => {
  test('jobs are whole batches cut from index 0', () => {
    assert.deepEqual(
      planJobs(7, 2).map((j) => [j.from, j.to]),
      [
        [0, 2],
        [2, 4],
        [4, 6],
        [6, 7],
      ],
    );
    assert.deepEqual(
      planJobs(10, 3, 2).map((j) => [j.from, j.to]),
      [
        [0, 6],
        [6, 10],
      ],
    );
    assert.throws(() => planJobs(0, 4), /nothing to do/);
  });

  test('a job and chunked results round-trip; a result completes per attempt', () => {
    const job = { run: 'r', task: 't1', index: 2, jobs: 5, from: 4, to: 6, kind: 'likelihood' as const, specJson: '{"a":1}' };
    assert.deepEqual(decodeJob(encodeJob(job)), job);
    const values = Float32Array.from({ length: 3000 }, (_, i) => Math.sin(i));
    const head = {
      run: 'r',
      task: 't1',
      index: 2,
      from: 4,
      to: 6,
      worker: 'w',
      attempt: 'w#1',
      delivery: 1,
      nfe: [7, 9],
      calls: 3,
      seconds: 0.5,
      backend: 'wasm',
      weights: 'ema',
      shape: [30, 50, 1],
      error: '',
    };
    const chunks = chunkResult(head, toLEBytes(values), 4096 + 8192);
    assert.ok(chunks.length === 3 && chunks.every((c) => c.data.byteLength <= 4096));
    const asm = new ResultAssembler();
    // an abandoned partial attempt by another worker does not complete the job, nor spoil it
    assert.equal(asm.add({ ...decodeResult(encodeResult(chunks[1])), attempt: 'x#1' } as JobResultChunk), undefined);
    const decoded = chunks.map((c) => decodeResult(encodeResult(c)));
    assert.equal(asm.add(decoded[2]), undefined);
    assert.equal(asm.add(decoded[0]), undefined);
    const r = asm.add(decoded[1])!;
    assert.deepEqual(payloadValues(r.payload, Float32Array), values);
    assert.deepEqual([r.nfe, r.calls, r.shape, r.weights], [[7, 9], 3, [30, 50, 1], 'ema']);
    assert.equal(asm.add(decoded[1]), undefined, 'a job completes once');
    assert.throws(() => decodeResult(new Uint8Array([0xff, 0xff, 0xff])), /undecodable/);
  });
});

describe('coordinator sample / likelihood', () => {
  let refNpy: Buffer;
  let refBpd: string;

  before(() => {
    ok(
      runBin('scoreflow', [
        'train',
        ...TINY_NET,
        '--limit',
        '64',
        '--batch-size',
        '16',
        '--steps',
        '2',
        '--backend',
        'wasm',
        '--threads',
        '1',
        '--out',
        join(dir, 'train'),
      ]),
      'train',
    );
    ok(runBin('scoreflow', ['sample', '--ckpt', ckpt, ...SAMPLE, '--out', join(dir, 'ref.npy')]), 'scoreflow sample');
    refNpy = readFileSync(join(dir, 'ref.npy'));
    ok(runBin('scoreflow', ['likelihood', '--ckpt', ckpt, ...LIKELIHOOD, '--out', join(dir, 'ref-bpd.json')]), 'scoreflow likelihood');
    refBpd = stable(join(dir, 'ref-bpd.json'));
  });

  test('samples: byte-identical .npy for 1, 2 and 3 workers, equal to scoreflow sample', () => {
    for (const n of [1, 2, 3]) {
      const out = join(dir, `s${n}.npy`);
      const r = runBin('coordinator', ['sample', '--gpus', String(n), '--ckpt', ckpt, ...SAMPLE, ...FAST, '--out', out]);
      ok(r, `coordinator sample --gpus ${n}`);
      assert.ok(readFileSync(out).equals(refNpy), `--gpus ${n}: .npy differs from scoreflow sample's`);
      const summary = JSON.parse(readFileSync(join(dir, `s${n}.json`), 'utf8'));
      assert.equal(summary.fanout.jobs, 4);
      assert.equal(stable(join(dir, `s${n}.json`)), stable(join(dir, 'ref.json')), 'summary differs beyond timings');
      assert.deepEqual([summary.nfe, summary.network_calls, summary.weights], [30, 120, 'ema']);
      assert.ok(existsSync(join(dir, `s${n}.png`)));
    }
  });

  test('bits/dim: identical report for 1, 2 and 3 workers, equal to scoreflow likelihood', () => {
    for (const n of [1, 2, 3]) {
      const out = join(dir, `l${n}.json`);
      const r = runBin('coordinator', ['likelihood', '--gpus', String(n), '--ckpt', ckpt, ...LIKELIHOOD, ...FAST, '--out', out]);
      ok(r, `coordinator likelihood --gpus ${n}`);
      assert.equal(stable(out), refBpd, `--gpus ${n}: bits/dim differ from scoreflow likelihood's`);
      assert.equal(JSON.parse(r.stdout).fanout.jobs, 3);
    }
  });

  describe('a worker SIGKILLed mid-job', () => {
    let nats: NatsServer;
    const workers: ChildProcess[] = [];
    before(async () => {
      nats = await startNats();
    });
    after(async () => {
      for (const w of workers) w.kill('SIGKILL');
      await nats.close();
    });

    /** Start a worker of run `kill` and wait until it is up. */
    async function worker(id: string): Promise<ChildProcess & { log: string[] }> {
      const w = Object.assign(spawnBin('worker', ['start', '--nats', nats.url, '--run', 'kill', '--id', id, '--backend', 'wasm']), {
        log: [] as string[],
      });
      workers.push(w);
      w.stderr!.on('data', (b: Buffer) => w.log.push(...b.toString().split('\n')));
      await until(() => w.log.some((l) => l.includes('joining run')), `worker ${id} up`);
      return w;
    }

    /** Run a coordinator task on the external workers; SIGKILL the first worker that starts a job. */
    async function killOneDuring(
      args: string[],
      pool: (ChildProcess & { log: string[] })[],
    ): Promise<{ code: number | null; stdout: string; stderr: string; victim: number }> {
      const c = spawnBin('coordinator', [...args, '--no-spawn', '--nats', nats.url, '--run', 'kill', ...FAST]);
      let stdout = '';
      let stderr = '';
      c.stdout!.on('data', (b: Buffer) => (stdout += b));
      c.stderr!.on('data', (b: Buffer) => (stderr += b));
      const marks = pool.map((w) => w.log.length);
      let victim = -1;
      await until(
        () => (victim = pool.findIndex((w, i) => w.log.slice(marks[i]).some((l) => / job \d+\/\d+ \[/.test(l)))) >= 0,
        'a worker takes a job',
      );
      pool[victim].kill('SIGKILL');
      const code = await new Promise<number | null>((res) => c.once('exit', res));
      return { code, stdout, stderr, victim };
    }

    test('its job is redelivered to another worker; .npy and bits/dim unchanged', async () => {
      const pool = [await worker('k0'), await worker('k1')];
      const s = await killOneDuring(['sample', '--ckpt', ckpt, ...SAMPLE, '--out', join(dir, 'kill.npy')], pool);
      ok(s, 'coordinator sample with a worker killed');
      assert.match(s.stderr, /on delivery 2 \(redelivered\)/);
      assert.ok(readFileSync(join(dir, 'kill.npy')).equals(refNpy), '.npy differs after a redelivery');
      assert.ok(JSON.parse(s.stdout).fanout.redelivered >= 1);

      const survivors = [pool[1 - s.victim], await worker('k2')];
      const l = await killOneDuring(['likelihood', '--ckpt', ckpt, ...LIKELIHOOD, '--out', join(dir, 'kill.json')], survivors);
      ok(l, 'coordinator likelihood with a worker killed');
      assert.match(l.stderr, /on delivery 2 \(redelivered\)/);
      assert.equal(stable(join(dir, 'kill.json')), refBpd);
    });
  });

  test('a coordinator killed mid-task resumes: finished jobs come from OUT.jobs/, only the rest is computed, same report', async () => {
    const nats = await startNats();
    const ws: ChildProcess[] = [];
    try {
      const w = spawnBin('worker', ['start', '--nats', nats.url, '--run', 'resume', '--id', 'r0', '--backend', 'wasm', '--threads', '1']);
      ws.push(w);
      let wlog = '';
      w.stderr!.on('data', (b: Buffer) => (wlog += b));
      await until(() => wlog.includes('joining run'), 'worker up');
      const out = join(dir, 'resume.json');
      const journal = join(dir, 'resume.jobs');
      const args = [
        'likelihood',
        '--ckpt',
        ckpt,
        ...LIKELIHOOD,
        '--no-spawn',
        '--nats',
        nats.url,
        '--run',
        'resume',
        ...FAST,
        '--out',
        out,
      ];
      const c = spawnBin('coordinator', args);
      const files = () => (existsSync(journal) ? readdirSync(journal, { recursive: true }).filter((f) => String(f).endsWith('.json')) : []);
      await until(() => files().length >= 1, 'a finished job in the journal');
      c.kill('SIGKILL');
      await new Promise((r) => c.once('exit', r));
      assert.ok(!existsSync(out), 'the killed coordinator wrote no report');
      const kept = files().length;
      const r = runBin('coordinator', args);
      ok(r, 'the resumed coordinator likelihood');
      assert.match(r.stderr, new RegExp(`${kept} job\\(s\\) taken from .*resume\\.jobs`));
      assert.equal(stable(out), refBpd, 'the resumed report differs from scoreflow likelihood');
      const fan = JSON.parse(r.stdout).fanout as { reused_jobs: number; workers: Record<string, number>; jobs: number };
      assert.equal(fan.reused_jobs, kept);
      assert.equal(
        Object.values(fan.workers).reduce((a, b) => a + b, 0),
        fan.jobs - kept,
        'jobs computed again',
      );
      assert.ok(!existsSync(journal), 'the journal goes once the report is written');
    } finally {
      for (const w of ws) w.kill('SIGKILL');
      await nats.close();
    }
  });

  test('a checkpoint the workers cannot load fails the task once, with their error, and writes nothing', () => {
    const bad = join(dir, 'bad.safetensors');
    writeFileSync(bad, 'not a checkpoint at all');
    const out = join(dir, 'bad.npy');
    const t0 = Date.now();
    const r = runBin('coordinator', ['sample', '--gpus', '2', '--ckpt', bad, ...SAMPLE, ...FAST, '--out', out]);
    assert.equal(r.code, 1);
    // the coordinator's own lines naming the error (workers' lines come prefixed with [wI])
    const shown = r.stderr.split('\n').filter((l) => l.startsWith('coordinator: ') && l.includes('bad.safetensors'));
    assert.equal(shown.length, 1, r.stderr);
    assert.match(shown[0], /^coordinator: worker \S+: .*bad\.safetensors: .*not safetensors/);
    assert.ok(!existsSync(out) && !existsSync(join(dir, 'bad.json')));
    assert.ok(Date.now() - t0 < 30_000, 'no redelivery loop');
  });

  test('--n 0 and an empty split are one clear line', () => {
    const n0 = runBin('coordinator', ['sample', '--ckpt', ckpt, '--n', '0', '--out', join(dir, 'z.npy')]);
    assert.notEqual(n0.code, 0);
    assert.match(n0.stderr.trim(), /^coordinator: .*'--n <n>' argument '0' is invalid/);
    assert.equal(n0.stderr.trim().split('\n').length, 1);
    const empty = join(dir, 'empty.npy');
    writeNpySync(empty, { shape: [0, 28, 28], data: new Float32Array(0) });
    const e = runBin('coordinator', ['likelihood', '--ckpt', ckpt, '--data', empty]);
    assert.equal(e.code, 1);
    // the data loader refuses an empty image set itself, in one line naming the file
    assert.match(e.stderr.trim(), /^coordinator: .*empty\.npy: .*\[0,28,28\]/);
    assert.equal(e.stderr.trim().split('\n').length, 1);
  });
});

async function until(cond: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(20);
  }
}
