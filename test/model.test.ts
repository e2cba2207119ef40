/** ScoreNet: layouts, PyTorch parity on every available backend, interchange with PyTorch. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/core/backend/index.js';
import { datasetPath } from '../src/core/data/mnist.js';
import { modelConfig } from '../src/core/model/config.js';
import {
  fromTorchLayout,
  initParams,
  numParams,
  paramInfos,
  permute,
  structurallyZeroGrads,
  toTorchLayout,
} from '../src/core/model/params.js';
import { ScoreNet } from '../src/core/model/scorenet.js';
import { readSafetensors } from '../src/core/io/safetensors.js';
import { runParity } from '../src/core/parity.js';
import { packagePath } from '../src/core/paths.js';
import { makeSde } from '../src/core/sde.js';
import { loadWeights, saveWeights } from '../src/core/model/weights.js';
import { Rng } from '../src/core/rng.js';
import { tempDir } from './helpers/cli.js';

const FIXTURE = packagePath('test', 'fixtures', 'scorenet_parity.safetensors');

test('reference ScoreNet has exactly the PyTorch state_dict names and shapes', () => {
  const infos = paramInfos(modelConfig());
  const file = readSafetensors(FIXTURE);
  const torchParams = [...file.tensors].filter(([name]) => !/^(input|output|grad)\./.test(name));
  assert.deepEqual(new Map(infos.map((i) => [i.name, i.torchShape])), new Map(torchParams.map(([name, t]) => [name, t.shape])));
  assert.equal(numParams(infos), 1_049_633);
  const tconv3 = infos.find((i) => i.name === 'tconv3.weight')!;
  assert.deepEqual(tconv3.torchShape, [256, 64, 3, 3]);
  assert.deepEqual(tconv3.shape, [3, 3, 64, 256]);
});

test('layout conversion round-trips and matches an index-level transpose', () => {
  const data = Float32Array.from({ length: 2 * 3 * 4 * 5 }, (_, i) => i);
  const p = permute(data, [2, 3, 4, 5], [3, 2, 0, 1]);
  // element [a,b,c,d] of the input lands at [d,c,a,b]
  assert.equal(p[((4 * 4 + 3) * 2 + 1) * 3 + 2], data[((1 * 3 + 2) * 4 + 3) * 5 + 4]);
  for (const info of paramInfos(modelConfig({ channels: [4, 8, 8, 8], embedDim: 8 }))) {
    const ours = Float32Array.from({ length: info.size }, (_, i) => i * 0.5);
    assert.deepEqual(fromTorchLayout(info, toTorchLayout(info, ours)), ours, info.name);
  }
});

test('GroupNorm-before-bias gradients that are identically zero are named', () => {
  assert.deepEqual(structurallyZeroGrads(modelConfig()), ['dense7.dense.weight', 'dense7.dense.bias']);
});

for (const backend of ['wasm', 'cpu'] as const) {
  test(`PyTorch parity fixture passes on ${backend}`, async () => {
    await initBackend(backend, { log: () => {} });
    const r = runParity(FIXTURE, backend);
    assert.ok(r.score <= 1e-4, `score rel err ${r.score}`);
    assert.ok(r.loss <= 1e-4, `loss rel err ${r.loss}`);
    for (const [name, e] of Object.entries({ ...r.grads, ...r.zeroGrads })) assert.ok(e <= 1e-3, `${name}: ${e}`);
    assert.equal(Object.keys(r.grads).length + Object.keys(r.zeroGrads).length, paramInfos(modelConfig()).length - 1);
    assert.equal(r.pass, true);
  });
}

test('a fixture freshly made by reference/make_fixture.py (other seed, other images) passes parity on wasm', async () => {
  await initBackend('wasm', { log: () => {} });
  const out = join(tempDir(), 'fresh.safetensors');
  const args = [packagePath('reference', 'make_fixture.py'), datasetPath('test'), out, '--seed', '3', '--batch', '2', '--offset', '100'];
  const r = spawnSync('/usr/bin/python3', args, { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `make_fixture.py failed (needs Debian's python3 with python3-torch): ${r.stderr || r.error}`);
  const fresh = readSafetensors(out);
  assert.deepEqual(fresh.tensors.get('input.x')?.shape, [2, 1, 28, 28]);
  assert.deepEqual(fresh.tensors.get('output.loss')?.shape, [1]);
  assert.notDeepEqual(
    fresh.tensors.get('conv1.weight')?.data,
    readSafetensors(FIXTURE).tensors.get('conv1.weight')?.data,
    'seed 3 made the seed-0 weights',
  );
  const report = runParity(out, 'wasm');
  assert.ok(report.score <= 1e-4 && report.loss <= 1e-4, `score ${report.score}, loss ${report.loss}`);
  assert.equal(report.pass, true, JSON.stringify(report));
});

test('a checkpoint written here gives the same score in PyTorch', async () => {
  await initBackend('wasm', { log: () => {} });
  const cfg = modelConfig();
  const sde = makeSde({ name: 've' });
  const params = initParams(paramInfos(cfg), 7);
  const dir = tempDir();
  const path = join(dir, 'w.safetensors');
  await saveWeights(path, cfg, params);
  const n = 3;
  const x = new Rng(1).uniformArray(n * 784);
  const t = Float32Array.from([0.05, 0.4, 0.9]);
  const net = new ScoreNet(cfg, sde);
  const ours = tf.tidy(() => net.apply(net.tensors(params), tf.tensor4d(x, [n, 28, 28, 1]), tf.tensor1d(t)).dataSync());
  const ref = packagePath('reference');
  assert.ok(existsSync(join(ref, 'checkpoint.py')), `the PyTorch reference is expected at ${ref}`);
  const py = `
import sys, json, numpy as np, torch
sys.path.insert(0, ${JSON.stringify(ref)})
from checkpoint import load_model
m = load_model(sys.argv[1])
d = json.loads(sys.stdin.read())
x = torch.tensor(d['x'], dtype=torch.float32).reshape(${n}, 1, 28, 28)
t = torch.tensor(d['t'], dtype=torch.float32)
with torch.no_grad(): print(json.dumps(m(x, t).reshape(-1).tolist()))`;
  const r = spawnSync('/usr/bin/python3', ['-c', py, path], {
    input: JSON.stringify({ x: Array.from(x), t: Array.from(t) }),
    encoding: 'utf8',
    maxBuffer: 1 << 26,
  });
  assert.equal(r.status, 0, r.stderr);
  const theirs = JSON.parse(r.stdout) as number[];
  let d = 0;
  let m = 0;
  theirs.forEach((v, i) => {
    d = Math.max(d, Math.abs(v - ours[i]));
    m = Math.max(m, Math.abs(v));
  });
  assert.ok(d / m < 1e-4, `max rel diff ${d / m}`);
  // and it loads back here unchanged
  const back = loadWeights(path);
  assert.deepEqual(back.params, params);
  assert.deepEqual(back.model, cfg);
});
