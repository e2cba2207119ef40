/**
 * [hardening] items 2-9, tried as a hostile or unlucky user would, with real processes (the
 * bin scripts, a real nats-server, SIGKILL) and a tiny ScoreNet on wasm, or the synthetic
 * objective where only the cluster's bookkeeping is under test:
 *   2  a global batch smaller than the workers: refused at the CLI; extra workers stay idle
 *   3  checkpoints that always resume: a newer self-verifying checkpoint beats cluster.json,
 *      stale temp files go, old checkpoints (no digest) and bare state_dicts still load
 *   4  a SIGKILLed coordinator takes its nats-server and workers with it; its folder goes
 *   5  one flipped bit in a checkpoint is one line naming the file
 *   6  --resume refuses flags that contradict the checkpoint
 *   7  bounded reads and outputs: devices, directories, oversize batches and --n
 *   8  a killed and resumed run logs each step exactly once
 *   9  messages: ENOSPC once, ports, read-only --out, numeric ranges
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { readRunRecord, RunDir } from '../src/coordinator/run-dir.js';
import { describeError } from '../src/core/io/atomic.js';
import { DIGEST_KEY, encodeSafetensors, readSafetensors } from '../src/core/io/safetensors.js';
import { loadTrainingCheckpoint } from '../src/core/train/checkpoint.js';
import { packagePath } from '../src/core/paths.js';
import { createMetrics } from '../src/metrics/index.js';
import { errorLines, runBin, tempDir, TINY_NET } from './helpers/cli.js';
import { startNats, type NatsServer } from './helpers/nats.js';
import { logged, range, startBin, until, type Proc } from './helpers/procs.js';

const TINY = [...TINY_NET, '--limit', '64', '--batch-size', '8', '--backend', 'wasm', '--threads', '1'];
const SYN = { synthetic: true, params: 2000, batchSize: 12, samples: 96, seed: 1, lr: 0.01, computeMs: 30 };
const dir = tempDir('scoreflow-hardening-');

const procs: Proc[] = [];
after(() => {
  for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function start(bin: string, args: string[], stdin: 'ignore' | 'pipe' = 'ignore'): Proc {
  const p = startBin(bin, args, { stdin });
  procs.push(p);
  return p;
}

/** Resolves with the exit code, or fails the test when the process hangs (the bugs here hang). */
async function exitOf(p: Proc, ms: number, what: string): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), ms)));
  const code = await Promise.race([p.exited, hung]);
  clearTimeout(timer);
  if (code === 'hung') {
    p.child.kill('SIGKILL');
    assert.fail(`${what} did not end within ${ms / 1000} s:\n${p.output().slice(-2000)}`);
  }
  return code;
}

/** Exactly one error line on stderr matching `pattern`, and a non-zero exit. */
function oneLine(r: { code: number | null; stderr: string }, pattern: RegExp): string {
  assert.notEqual(r.code, 0, r.stderr);
  assert.notEqual(r.code, null, `killed by the timeout (it hung):\n${r.stderr.slice(-1000)}`);
  const lines = errorLines(r.stderr);
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0], pattern);
  return lines[0];
}

/** A training run of the tiny model: `scoreflow train ... --steps n --out DIR`. */
function trained(name: string, n: number): string {
  const out = join(dir, name);
  const r = runBin('scoreflow', ['train', ...TINY, '--steps', String(n), '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  return out;
}

/** /proc's view of a pid: dead when gone or a zombie (killed, not yet reaped). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !'ZX'.includes(stat.slice(stat.lastIndexOf(')') + 2)[0]);
  } catch {
    return false;
  }
}

/** The live child processes of `pid`, with their command lines. */
function childrenOf(pid: number): { pid: number; cmd: string }[] {
  const out: { pid: number; cmd: string }[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid && alive(Number(name)))
        out.push({ pid: Number(name), cmd: readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ') });
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** A pid that is certainly not running (a process that has exited). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(r.stdout);
}

function flipBit(path: string, fromEnd: number): void {
  const b = readFileSync(path);
  b[b.length - fromEnd] ^= 0x10;
  writeFileSync(path, b);
}

// ------------------------------------------------------------------------------------ 2

describe('item 2: a global batch smaller than the number of workers', () => {
  test('coordinator start refuses a --batch-size below --gpus or --min-workers, in one line, before starting anything', () => {
    const out = join(dir, 'b1');
    oneLine(
      runBin('coordinator', ['start', '--gpus', '2', '--steps', '2', '--batch-size', '1', '--out', out], { timeoutMs: 60_000 }),
      /--batch-size 1 is smaller than --gpus 2: each worker needs at least one sample/,
    );
    oneLine(
      runBin('coordinator', ['start', '--no-spawn', '--min-workers', '3', '--batch-size', '2', '--out', out], { timeoutMs: 60_000 }),
      /--batch-size 2 is smaller than --min-workers 3/,
    );
    assert.equal(existsSync(out), false);
  });

  test('workers beyond the global batch stay idle and the run finishes (no empty shard is planned)', async () => {
    const server = await startNats();
    try {
      const out = join(dir, 'idle');
      const syn = { ...SYN, batchSize: 1, computeMs: 20 };
      // Both workers up before the coordinator: its Hello reaches both, and both ask to join.
      const ws = [0, 1].map((i) =>
        start('worker', ['start', '--nats', server.url, '--run', 'idle', '--id', `i${i}`, '--backend', 'cpu', '--heartbeat-ms', '200']),
      );
      await until(() => ws.every((w) => /joining run idle/.test(w.output())), 30_000, 'both workers');
      const c = start('coordinator', [
        'start',
        '--no-spawn',
        '--nats',
        server.url,
        '--run',
        'idle',
        '--out',
        out,
        '--steps',
        '20',
        '--batch-size',
        '1',
        '--synthetic',
        JSON.stringify(syn),
        '--min-workers',
        '1',
        '--heartbeat-timeout',
        '1000',
      ]);
      assert.equal(await exitOf(c, 60_000, 'the coordinator'), 0, c.output());
      assert.match(c.output(), /worker i[01] left idle: the global batch of 1 is split over 1 worker\(s\) already/);
      for (const w of ws) assert.doesNotMatch(w.output(), /outside the batch|Error:/);
      assert.deepEqual(logged(out), range(0, 20));
    } finally {
      await server.close();
    }
  });
});

// ------------------------------------------------------------------------------------ 3

describe('item 3: checkpoints that always resume', () => {
  test('killed between the checkpoint rename and the cluster.json update, a coordinator resumes from the newer checkpoint; stale temps go', () => {
    const out = join(dir, 'rename');
    const args = (n: number) => ['start', '--gpus', '1', ...TINY, '--steps', String(n), '--ckpt-every', '2', '--out', out];
    let r = runBin('coordinator', args(2));
    assert.equal(r.code, 0, r.stderr);
    const atStep2 = readFileSync(join(out, 'cluster.json'));
    r = runBin('coordinator', args(4));
    assert.equal(r.code, 0, r.stderr);
    // The state a kill -9 between the two writes leaves: the step-4 checkpoint renamed into
    // place, cluster.json still naming step 2's checkpoint and SHA-256, and a temp file of a
    // write that never finished (its writer is dead).
    writeFileSync(join(out, 'cluster.json'), atStep2);
    assert.equal(JSON.parse(atStep2.toString()).checkpoint.step, 2);
    const temp = join(out, `.checkpoint.safetensors.tmp-${deadPid()}-0badc0de`);
    writeFileSync(temp, Buffer.alloc(4096));
    r = runBin('coordinator', args(6));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /resuming run rename from its checkpoint at step 4/);
    assert.match(r.stderr, /removed .*\.checkpoint\.safetensors\.tmp-\d+-0badc0de/);
    assert.equal(existsSync(temp), false);
    const ck = loadTrainingCheckpoint(join(out, 'checkpoint.safetensors'));
    assert.equal(ck.state.step, 6);
    assert.equal(ck.run, 'rename');
    assert.equal(ck.digest, 'verified');
    assert.deepEqual(logged(out), range(0, 6));
  });

  test("a state with no digest of its own (the synthetic objective's), killed between its rename and cluster.json, is trusted: cluster.json named it first", async () => {
    const out = join(dir, 'pending');
    const base = { run: 'pending', incarnation: 1, configJson: JSON.stringify(SYN) };
    const runDir = new RunDir(out);
    await runDir.write(base);
    const at2 = await runDir.writeCheckpoint(Buffer.from('raw state at step 2'), 2, 'c2');
    await runDir.write({ ...base, checkpoint: at2 });
    const at4 = await runDir.writeCheckpoint(Buffer.from('raw state at step 4'), 4, 'c4');
    // killed here: cluster.json still records step 2, and names step 4's state as pending
    assert.equal(readRunRecord(out)!.checkpoint!.step, 2);
    const restarted = new RunDir(out).read()!;
    assert.deepEqual(restarted.checkpoint, at4);
    assert.equal(restarted.pending, undefined);
    // a state that is neither is still refused
    writeFileSync(join(out, 'checkpoint.safetensors'), 'some other state');
    assert.throws(() => new RunDir(out).read(), /does not match the SHA-256 recorded in cluster\.json and carries no digest of its own/);
  });

  test('every checkpoint carries its run id, step and a digest of its tensor bytes', () => {
    const out = trained('meta', 2);
    const meta = readSafetensors(join(out, 'checkpoint.safetensors')).metadata;
    assert.equal(meta.step, '2');
    assert.match(meta.run, /^train-[0-9a-f]+$/);
    assert.match(meta[DIGEST_KEY], /^[0-9a-f]{64}$/);
    // resumed, it stays the same run
    const r = runBin('scoreflow', ['train', '--resume', '--steps', '3', '--out', out, '--backend', 'wasm', '--threads', '1']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readSafetensors(join(out, 'checkpoint.safetensors')).metadata.run, meta.run);
  });

  test('a checkpoint from before digests still loads (said once on stderr); a bare state_dict loads silently', () => {
    const out = trained('legacy', 2);
    const ckpt = join(out, 'checkpoint.safetensors');
    const file = readSafetensors(ckpt);
    const { [DIGEST_KEY]: _digest, run: _run, ...oldMeta } = file.metadata;
    writeFileSync(ckpt, encodeSafetensors(file.tensors, oldMeta));
    const bare = join(dir, 'bare.safetensors');
    writeFileSync(bare, encodeSafetensors(new Map([...file.tensors].filter(([k]) => !k.startsWith('train.')))));
    let r = runBin('scoreflow', [
      'sample',
      '--ckpt',
      ckpt,
      '--n',
      '2',
      '--steps',
      '2',
      '--out',
      join(dir, 'legacy.npy'),
      '--backend',
      'wasm',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr.split('\n').filter((l) => l.includes('has no data digest')).length, 1, r.stderr);
    r = runBin('scoreflow', ['train', '--resume', '--steps', '3', '--out', out, '--backend', 'wasm', '--threads', '1']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /has no data digest/);
    r = runBin('scoreflow', ['sample', '--ckpt', bare, '--n', '2', '--steps', '2', '--out', join(dir, 'bare.npy'), '--backend', 'wasm']);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /digest/);
  });
});

// ------------------------------------------------------------------------------------ 4

describe('item 4: a killed coordinator takes its children with it', () => {
  test('coordinator start --gpus 2 SIGKILLed: its nats-server and both workers end, and its nats folder is removed by the next start', async () => {
    const out = join(dir, 'orphans');
    const c = start('coordinator', [
      'start',
      '--gpus',
      '2',
      '--backend',
      'cpu',
      '--threads',
      '1',
      '--out',
      out,
      '--steps',
      '100000',
      '--batch-size',
      '12',
      '--synthetic',
      JSON.stringify(SYN),
      '--heartbeat-timeout',
      '1000',
    ]);
    await until(() => logged(out).length >= 3, 60_000, 'the first steps');
    const kids = childrenOf(c.child.pid!);
    const server = kids.find((k) => k.cmd.includes('nats-server'));
    const workers = kids.filter((k) => k.cmd.includes('worker.js start'));
    assert.ok(server, `no nats-server among ${JSON.stringify(kids)}`);
    assert.equal(workers.length, 2, JSON.stringify(kids));
    const natsDir = /-c (\S+)\/nats\.conf/.exec(server.cmd)![1];
    assert.ok(existsSync(natsDir));
    c.child.kill('SIGKILL');
    await c.exited;
    const all = [server, ...workers].map((k) => k.pid);
    await until(() => all.every((p) => !alive(p)), 15_000, `the children ${all.join(', ')} of the killed coordinator to end`);
    const next: NatsServer = await startNats();
    await next.close();
    assert.equal(existsSync(natsDir), false, `${natsDir} is still there`);
  });

  test('a worker started with --parent-pipe exits when its stdin (the pipe from its parent) closes', async () => {
    const server = await startNats();
    try {
      const w = start('worker', ['start', '--nats', server.url, '--run', 'pp', '--id', 'pp0', '--backend', 'cpu', '--parent-pipe'], 'pipe');
      await until(() => /joining run pp/.test(w.output()), 30_000, 'the worker to start');
      w.child.stdin!.end();
      assert.equal(await exitOf(w, 15_000, 'the worker'), 1, w.output());
      assert.match(w.output(), /the coordinator that started this worker is gone/);
    } finally {
      await server.close();
    }
  });
});

// ------------------------------------------------------------------------------------ 5

describe('item 5: silent corruption', () => {
  test('one flipped bit in the tensor data: train --resume, sample and coordinator --resume each fail with one line naming the file', () => {
    const out = trained('flip', 2);
    const ckpt = join(out, 'checkpoint.safetensors');
    flipBit(ckpt, 1000);
    const before = readFileSync(ckpt);
    const corrupt = new RegExp(`${ckpt.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: corrupt`);
    oneLine(runBin('scoreflow', ['train', '--resume', '--steps', '3', '--out', out, '--backend', 'wasm']), corrupt);
    oneLine(
      runBin('scoreflow', ['sample', '--ckpt', ckpt, '--n', '2', '--steps', '2', '--out', join(dir, 'flip.npy'), '--backend', 'wasm']),
      corrupt,
    );
    oneLine(runBin('coordinator', ['start', '--resume', '--gpus', '1', '--steps', '3', '--out', out, '--backend', 'wasm']), corrupt);
    assert.ok(readFileSync(ckpt).equals(before), 'the checkpoint was touched');
    assert.equal(existsSync(join(dir, 'flip.npy')), false);
  });
});

// ------------------------------------------------------------------------------------ 6

describe('item 6: --resume and flags that contradict the checkpoint', () => {
  test('scoreflow train --resume names each contradicting flag and what the checkpoint has; equal values are fine', () => {
    const out = trained('contra', 2);
    const line = oneLine(
      runBin('scoreflow', [
        'train',
        '--resume',
        '--steps',
        '3',
        '--out',
        out,
        '--batch-size',
        '16',
        '--lr',
        '0.01',
        '--lr-warmup',
        '7',
        '--sde',
        'vp',
        '--backend',
        'wasm',
      ]),
      /--batch-size 16 \(the checkpoint has 8\)/,
    );
    assert.match(line, /--lr 0\.01 \(the checkpoint has 0\.0001\)/);
    assert.match(line, /--lr-warmup 7 \(the checkpoint has 0\)/);
    assert.match(line, /--sde vp \(the checkpoint has ve\)/);
    assert.equal(loadTrainingCheckpoint(join(out, 'checkpoint.safetensors')).state.step, 2);
    const r = runBin('scoreflow', [
      'train',
      '--resume',
      '--steps',
      '3',
      '--out',
      out,
      '--batch-size',
      '8',
      '--lr',
      '0.0001',
      '--sde',
      've',
      '--backend',
      'wasm',
      '--threads',
      '1',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(loadTrainingCheckpoint(join(out, 'checkpoint.safetensors')).state.step, 3);
    // coordinator start --resume from this checkpoint: the same rule
    oneLine(
      runBin('coordinator', ['start', '--resume', '--gpus', '1', '--steps', '4', '--out', out, '--sde', 'vp', '--backend', 'wasm']),
      /--sde vp \(the checkpoint has ve\)/,
    );
  });

  test('coordinator start restarted on the same --out refuses contradicting flags, and takes the batch size from the run', () => {
    const out = join(dir, 'contra-c');
    let r = runBin('coordinator', ['start', '--gpus', '1', ...TINY, '--steps', '2', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    oneLine(
      runBin('coordinator', [
        'start',
        '--gpus',
        '1',
        '--steps',
        '3',
        '--out',
        out,
        '--batch-size',
        '16',
        '--lr',
        '0.01',
        '--backend',
        'wasm',
      ]),
      /--batch-size 16 \(the run has 8\), --lr 0\.01 \(the run has 0\.0001\)/,
    );
    // No training flag repeated: the run's own settings (batch 8 over 64 images), not the defaults.
    r = runBin('coordinator', ['start', '--gpus', '1', '--steps', '3', '--out', out, '--backend', 'wasm', '--threads', '1']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(loadTrainingCheckpoint(join(out, 'checkpoint.safetensors')).state.step, 3);
  });
});

// ------------------------------------------------------------------------------------ 7

describe('item 7: bounded memory on bad input', () => {
  test('data and checkpoint paths must be regular files: /dev/zero, a directory, a FIFO are one line at once', () => {
    const fifo = join(dir, 'fifo');
    spawnSync('mkfifo', [fifo]);
    const t = { timeoutMs: 60_000 };
    oneLine(
      runBin('scoreflow', ['train', '--data', '/dev/zero', '--out', join(dir, 'z1'), '--backend', 'wasm'], t),
      /\/dev\/zero: is a character device, not a regular file/,
    );
    oneLine(
      runBin('scoreflow', ['train', '--data', fifo, '--out', join(dir, 'z1'), '--backend', 'wasm'], t),
      /fifo: is a named pipe, not a regular file/,
    );
    oneLine(
      runBin('scoreflow', ['train', '--data', dir, '--out', join(dir, 'z1'), '--backend', 'wasm'], t),
      /is a directory, not a regular file/,
    );
    oneLine(
      runBin('scoreflow', ['sample', '--ckpt', '/dev/zero', '--out', join(dir, 'z.npy'), '--backend', 'wasm'], t),
      /\/dev\/zero: is a character device/,
    );
    oneLine(
      runBin('coordinator', ['start', '--gpus', '1', '--data', '/dev/zero', '--out', join(dir, 'z2')], t),
      /\/dev\/zero: is a character device/,
    );
    assert.equal(existsSync(join(dir, 'z1')), false);
  });

  test('a batch larger than the data set is refused before anything is allocated', () => {
    oneLine(
      runBin('scoreflow', ['train', ...TINY, '--batch-size', '100', '--out', join(dir, 'big')]),
      /--batch-size 100 is larger than the 64 images of .*: use at most 64/,
    );
    oneLine(
      runBin('scoreflow', ['train', '--batch-size', '100000', '--backend', 'wasm', '--out', join(dir, 'big')]),
      /--batch-size 100000 is larger than the 60000 images/,
    );
    oneLine(
      runBin('coordinator', ['start', '--gpus', '1', ...TINY, '--batch-size', '65', '--out', join(dir, 'big')]),
      /--batch-size 65 is larger than the 64 images/,
    );
  });

  test('sample --n past the memory of the machine says how much it needs, and writes nothing', () => {
    const out = trained('n-huge', 1);
    const ckpt = join(out, 'checkpoint.safetensors');
    const npy = join(dir, 'huge.npy');
    oneLine(
      runBin('scoreflow', ['sample', '--ckpt', ckpt, '--n', '100000000', '--out', npy, '--backend', 'wasm']),
      /--n 100000000: .* need 3\d\d\.\d GB of memory, .* is available; use --n \d+ or less/,
    );
    oneLine(
      runBin('coordinator', ['sample', '--gpus', '1', '--ckpt', ckpt, '--n', '100000000', '--out', npy, '--backend', 'wasm']),
      /--n 100000000: .* of memory/,
    );
    assert.equal(existsSync(npy), false);
  });
});

// ------------------------------------------------------------------------------------ 8

describe('item 8: a killed and resumed run logs each step exactly once', () => {
  test('scoreflow train SIGKILLed past a checkpoint, then resumed: log.jsonl holds steps 1..N once, in order', async () => {
    const out = join(dir, 'log-train');
    const p = start('scoreflow', ['train', ...TINY, '--steps', '1000', '--ckpt-every', '5', '--out', out]);
    // past the step-5 checkpoint, so the log holds steps the checkpoint does not
    await until(() => logged(out, 'log.jsonl').length >= 8, 120_000, 'steps past the first checkpoint');
    p.child.kill('SIGKILL');
    await p.exited;
    const at = loadTrainingCheckpoint(join(out, 'checkpoint.safetensors')).state.step;
    const end = at + 4;
    const r = runBin('scoreflow', ['train', '--resume', '--steps', String(end), '--out', out, '--backend', 'wasm', '--threads', '1']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(logged(out, 'log.jsonl'), range(1, end + 1));
  });

  test('coordinator start SIGKILLed and restarted: train.jsonl holds steps 0..N-1 once, in order', async () => {
    const out = join(dir, 'log-coord');
    const args = [
      'start',
      '--gpus',
      '1',
      '--backend',
      'cpu',
      '--threads',
      '1',
      '--out',
      out,
      '--steps',
      '40',
      '--batch-size',
      '12',
      '--ckpt-every',
      '8',
      '--synthetic',
      JSON.stringify(SYN),
      '--heartbeat-timeout',
      '1000',
    ];
    const c1 = start('coordinator', args);
    await until(() => logged(out).length >= 11, 60_000, 'steps past the first checkpoint');
    c1.child.kill('SIGKILL');
    await c1.exited;
    const c2 = start('coordinator', args);
    assert.equal(await exitOf(c2, 120_000, 'the restarted coordinator'), 0, c2.output());
    assert.match(c2.output(), /resuming run log-coord from its checkpoint at step (8|16|24)/);
    assert.deepEqual(logged(out), range(0, 40));
  });
});

// ------------------------------------------------------------------------------------ 9

describe('item 9: messages', () => {
  test('an errno error is described with its code once (ENOSPC, not ENOSPC: ENOSPC:)', () => {
    const fd = openSync('/dev/full', 'w');
    let err: unknown;
    try {
      writeSync(fd, Buffer.alloc(16));
    } catch (e) {
      err = e;
    } finally {
      closeSync(fd);
    }
    const text = describeError(err);
    assert.match(text, /^ENOSPC: no space left on device/);
    assert.equal(text.split('ENOSPC').length - 1, 1, text);
  });

  test('ports are range-checked by the parser; the metrics server never says "undefined"', async () => {
    oneLine(
      runBin('coordinator', ['start', '--metrics-port', '99999', '--out', join(dir, 'port')]),
      /--metrics-port.*from 0 to 65535.*'99999'/,
    );
    oneLine(
      runBin('worker', ['start', '--nats', 'nats://127.0.0.1:1', '--run', 'x', '--metrics-port', '70000']),
      /--metrics-port.*from 0 to 65535/,
    );
    const m = createMetrics({ role: 'coordinator', run: 'x' });
    await assert.rejects(
      m.serve(99999, { tries: 100 }),
      (e: Error) => !e.message.includes('undefined') && /port 99999 is not a TCP port/.test(e.message),
    );
  });

  test('a read-only --out is reported as not writable, before any work', () => {
    const ro = join(dir, 'ro');
    mkdirSync(ro);
    chmodSync(ro, 0o555);
    chmodSync(dir, 0o755);
    // Permissions do not stop root: run the commands as root without the capabilities that
    // override them (util-linux setpriv), which still reads a checkout in a private folder
    // (/root, mktemp -d) that another user could not.
    const asUser = process.getuid?.() === 0 ? ['setpriv', '--bounding-set=-dac_override,-dac_read_search', '--'] : [];
    const run = (bin: string, args: string[]) => {
      const r = spawnSync(
        asUser[0] ?? process.execPath,
        [...asUser.slice(1), ...(asUser.length ? [process.execPath] : []), packagePath('bin', `${bin}.js`), ...args],
        { encoding: 'utf8', timeout: 60_000 },
      );
      return { code: r.status, stderr: r.stderr };
    };
    for (const [bin, args] of [
      ['scoreflow', ['train', ...TINY, '--steps', '1', '--out', join(ro, 'run')]],
      ['coordinator', ['start', '--gpus', '1', ...TINY, '--steps', '1', '--out', join(ro, 'run')]],
      [
        'scoreflow',
        [
          'sample',
          '--ckpt',
          packagePath('test', 'fixtures', 'scorenet_parity.safetensors'),
          '--out',
          join(ro, 's.npy'),
          '--backend',
          'wasm',
        ],
      ],
    ] as const) {
      const line = oneLine(run(bin, [...args]), /--out .*: not writable: .*ro refuses new files \((EACCES|EROFS)/);
      assert.doesNotMatch(line, /ENOENT|mkdir/);
    }
    assert.deepEqual(readdirSync(ro), []);
  });

  test('numeric flags are range-checked with messages that say what was wrong', () => {
    const out = ['--out', join(dir, 'ranges')];
    oneLine(runBin('scoreflow', ['train', '--lr', '1e6', ...out]), /--lr.*expected a number > 0 and <= 1, got '1e6'/);
    oneLine(runBin('scoreflow', ['train', '--lr', '0', ...out]), /--lr.*> 0/);
    oneLine(
      runBin('scoreflow', ['train', '--sigma-min', '0.5', '--sigma-max', '0.1', ...out]),
      /--sigma-max 0\.1 must be larger than --sigma-min 0\.5/,
    );
    oneLine(runBin('scoreflow', ['train', '--embed-dim', '100000', ...out]), /--embed-dim.*<= 4096/);
    oneLine(runBin('scoreflow', ['sample', '--ckpt', 'x', '--rtol', '2', '--out', join(dir, 'r.npy')]), /--rtol.*<= 1/);
    oneLine(runBin('coordinator', ['start', '--gpus', '0', ...out]), /--gpus.*>= 1/);
    oneLine(runBin('coordinator', ['start', '--heartbeat-timeout', '99999999999', ...out]), /--heartbeat-timeout.*<= 3600000/);
    assert.equal(existsSync(join(dir, 'ranges')), false);
  });
});
