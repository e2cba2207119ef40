/** Adam, EMA and clipping on flat vectors, against PyTorch's torch.optim.Adam. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { adamStep, l2norm, newOptimState, type AdamSettings } from '../src/core/train/adam.js';
import { nativeAdamFor } from '../src/core/backend/native-adam.js';
import { loadTorchAddon } from '../src/core/backend/torch/index.js';
import { Rng } from '../src/core/rng.js';
import { NonFiniteError } from '../src/core/train/finite.js';

const SETTINGS: AdamSettings = { lr: 1e-2, beta1: 0.9, beta2: 0.999, adamEps: 1e-8, emaDecay: 0.9, gradClip: 0 };

test('five Adam steps equal torch.optim.Adam (and the EMA its warmed-up average)', () => {
  const n = 50;
  const p0 = new Rng(1).normal(n);
  const grads = Array.from({ length: 5 }, (_, k) => new Rng(2, k).normal(n));
  const s = newOptimState(p0.slice());
  const ema = Float64Array.from(p0);
  grads.forEach((g, k) => {
    adamStep(s, g, SETTINGS);
    const decay = Math.min(0.9, (2 + k) / (11 + k));
    for (let i = 0; i < n; i++) ema[i] = decay * ema[i] + (1 - decay) * s.params[i];
  });
  assert.equal(s.step, 5);
  const py = `
import json, sys, torch
d = json.loads(sys.stdin.read())
p = torch.nn.Parameter(torch.tensor(d['p0'], dtype=torch.float32))
opt = torch.optim.Adam([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
for g in d['grads']:
    p.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
print(json.dumps(p.detach().tolist()))`;
  const r = spawnSync('/usr/bin/python3', ['-c', py], {
    input: JSON.stringify({ p0: Array.from(p0), grads: grads.map((g) => Array.from(g)) }),
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  const torch = JSON.parse(r.stdout) as number[];
  torch.forEach((v, i) =>
    assert.ok(Math.abs(v - s.params[i]) <= 1e-6 * Math.max(1, Math.abs(v)), `param ${i}: ${s.params[i]} vs torch ${v}`),
  );
  s.ema.forEach((v, i) => assert.ok(Math.abs(v - ema[i]) < 1e-6, `ema ${i}`));
});

test('a zero gradient leaves a parameter where it is (the frozen Fourier weights)', () => {
  const s = newOptimState(Float32Array.from([1, 2, 3]));
  for (let k = 0; k < 3; k++) adamStep(s, Float32Array.from([0, 0.5, 0]), SETTINGS);
  assert.equal(s.params[0], 1);
  assert.equal(s.params[2], 3);
  assert.ok(s.params[1] < 2);
});

test('gradient clipping scales the global norm down to the limit and no further', () => {
  const g = Float32Array.from([3, 4]); // norm 5
  const clipped = newOptimState(Float32Array.from([0, 0]));
  const scaled = newOptimState(Float32Array.from([0, 0]));
  adamStep(clipped, g, { ...SETTINGS, gradClip: 1 });
  adamStep(scaled, Float32Array.from([0.6, 0.8]), SETTINGS);
  // Adam's first step is scale-invariant, so compare the moments instead
  assert.ok(Math.abs(l2norm(clipped.m) - l2norm(scaled.m)) < 1e-6);
  const loose = newOptimState(Float32Array.from([0, 0]));
  adamStep(loose, g, { ...SETTINGS, gradClip: 10 });
  assert.ok(Math.abs(l2norm(loose.m) - 0.5) < 1e-6); // (1 - beta1) * 5
  assert.throws(() => adamStep(loose, Float32Array.from([1]), SETTINGS), /gradient has 1 values, parameters 2/);
});

test("the torch addon's native Adam gives the JavaScript update bit for bit, and refuses a non-finite gradient", () => {
  const addon = loadTorchAddon(); // CI builds it; missing, this fails rather than skips
  // more values than one thread chunk (65536), odd length, gradients spanning many magnitudes
  const n = 200_003;
  const rng = new Rng(7);
  const p0 = Float32Array.from(rng.normal(n), (v, i) => v * 10 ** ((i % 9) - 4));
  const settings = [SETTINGS, { ...SETTINGS, emaDecay: 0.999, gradClip: 3 }, { ...SETTINGS, emaDecay: 0 }];
  for (const a of settings) {
    const js = newOptimState(p0.slice());
    const native = newOptimState(p0.slice());
    for (let k = 0; k < 4; k++) {
      const g = Float32Array.from(new Rng(8, k).normal(n), (v, i) => v * 10 ** ((i % 11) - 6));
      adamStep(js, g, a);
      adamStep(native, g, a, addon.adam);
    }
    for (const key of ['params', 'm', 'v', 'ema'] as const) {
      const i = js[key].findIndex((v, j) => !Object.is(v, native[key][j]));
      assert.equal(i, -1, `${key}[${i}]: js ${js[key][i]} vs native ${native[key][i]} (gradClip ${a.gradClip}, emaDecay ${a.emaDecay})`);
    }
    assert.equal(native.step, 4);
  }
  assert.equal(nativeAdamFor('torch'), addon.adam, "a torch trainer is handed the addon's Adam");
  for (const b of ['wasm', 'cpu', 'tensorflow']) assert.equal(nativeAdamFor(b), undefined, `${b}: the JavaScript loop`);
  for (const impl of ['native', 'js'] as const) {
    const s = newOptimState(p0.slice());
    const g = new Float32Array(n);
    g[123_456] = Number.NaN;
    const engine = impl === 'native' ? addon.adam : undefined;
    assert.throws(() => adamStep(s, g, SETTINGS, engine), /non-finite gradient at step 0 \(index 123456\); state left unchanged/);
    assert.deepEqual(s.params, p0, impl);
    assert.equal(s.step, 0);
    assert.ok(s.m.every((v) => v === 0) && s.ema.every((v, i) => v === p0[i]), impl);
  }
});

test('the update of a gradient sum over count samples is, bit for bit, the update of its float32 mean (JavaScript and native)', () => {
  const addon = loadTorchAddon();
  const n = 70_001; // two native thread chunks and a ragged native block
  const p0 = Float32Array.from(new Rng(11).normal(n), (v, i) => v * 10 ** ((i % 7) - 3));
  for (const count of [1, 3, 32, 120, 7919]) {
    for (const a of [SETTINGS, { ...SETTINGS, emaDecay: 0.999, gradClip: 0.5 }]) {
      const states = { mean: newOptimState(p0.slice()), js: newOptimState(p0.slice()), native: newOptimState(p0.slice()) };
      for (let k = 0; k < 3; k++) {
        // sums over `count` samples, spanning many magnitudes (down to subnormal means)
        const sum = Float32Array.from(new Rng(12, k).normal(n), (v, i) => v * count * 10 ** ((i % 13) - 8) * (i % 997 === 0 ? 1e-35 : 1));
        const before = sum.slice();
        // the mean as a stored float32 array (what the update used to receive)
        const mean = Float32Array.from(sum, (v) => v / count);
        adamStep(states.mean, mean, a);
        adamStep(states.js, sum, a, undefined, count);
        adamStep(states.native, sum, a, addon.adam, count);
        assert.deepEqual(sum, before, 'the sum is not modified');
      }
      for (const impl of ['js', 'native'] as const)
        for (const key of ['params', 'm', 'v', 'ema'] as const) {
          const i = states.mean[key].findIndex((v, j) => !Object.is(v, states[impl][key][j]));
          assert.equal(i, -1, `${impl} ${key}[${i}], count ${count}, gradClip ${a.gradClip}`);
        }
    }
  }
  const s = newOptimState(p0.slice());
  const inf = new Float32Array(n);
  inf[5] = Number.POSITIVE_INFINITY;
  for (const engine of [undefined, addon.adam]) assert.throws(() => adamStep(s, inf, SETTINGS, engine, 8), NonFiniteError);
  for (const bad of [0, 2.5, 2 ** 24])
    assert.throws(() => adamStep(s, new Float32Array(n), SETTINGS, addon.adam, bad), /count must be an integer/);
  assert.equal(s.step, 0);
});
