import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { AUTO_ORDER, BACKEND_NAMES, backendInfo, initBackend, type BackendName } from '../src/core/backend/index.js';
import { Rng, Stream } from '../src/core/rng.js';
import { cgroupCpuLimit, computeCores } from '../src/core/cpus.js';

// Kernels are compared against the pure-JS reference within this fraction of the largest
// reference magnitude (float32 sums of up to a few hundred terms, in different orders).
const RTOL = 1e-4;

type Pad = 'valid' | 'same' | number | [[0, 0], [number, number], [number, number], [number, number]];
type Shape4 = [number, number, number, number];

interface Input {
  shape: number[];
  positive?: boolean;
}

const quiet = { log: () => {} };

function data(seed: number, i: number, input: Input): Float32Array {
  const n = input.shape.reduce((a, b) => a * b, 1);
  const rng = new Rng(seed, Stream.Test, i);
  return input.positive === true ? rng.uniformArray(n, 0.5, 2) : rng.normal(n);
}

/**
 * Value and gradients of sum(f(inputs) * w) on `backend`, w a fixed random cotangent (so the
 * gradients are not those of a plain sum), all inputs derived from `seed`.
 */
async function valueAndGrads(
  backend: string,
  seed: number,
  inputs: Input[],
  f: (...xs: tf.Tensor[]) => tf.Tensor,
  withGrads = true,
): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  return tf.tidy(() => {
    const xs = inputs.map((input, i) => tf.tensor(data(seed, i, input), input.shape));
    const loss = (...ts: tf.Tensor[]): tf.Scalar => {
      const y = f(...ts);
      const w = tf.tensor(data(seed, 1000, { shape: y.shape }), y.shape);
      return tf.sum(tf.mul(y, w));
    };
    if (!withGrads) return [Float32Array.from(loss(...xs).dataSync())];
    const { value, grads } = tf.valueAndGrads(loss)(xs);
    return [value, ...grads].map((t) => Float32Array.from(t.dataSync()));
  });
}

function maxAbs(a: Float32Array): number {
  return a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

/** Asserts wasm == cpu for value and every gradient; returns the reference magnitude. */
async function assertWasmMatchesCpu(
  label: string,
  seed: number,
  inputs: Input[],
  f: (...xs: tf.Tensor[]) => tf.Tensor,
  withGrads = true,
): Promise<number> {
  const ref = await valueAndGrads('cpu', seed, inputs, f, withGrads);
  const got = await valueAndGrads('wasm', seed, inputs, f, withGrads);
  let scale = 0;
  ref.forEach((r, k) => {
    const what = k === 0 ? 'value' : `grad ${k - 1}`;
    assert.equal(got[k].length, r.length, `${label}: ${what} size`);
    const mag = maxAbs(r);
    let diff = 0;
    r.forEach((v, i) => {
      diff = Math.max(diff, Math.abs(v - got[k][i]));
    });
    assert.ok(
      Number.isFinite(diff) && diff <= RTOL * Math.max(1, mag),
      `${label}: ${what} differs from cpu by ${diff} (reference magnitude ${mag})`,
    );
    if (k > 0) scale = Math.max(scale, mag);
  });
  return scale;
}

/** A random small conv setting; padding covers 'valid', 'same', a number and explicit pads. */
function convCase(seed: number): { x: Shape4; filter: Shape4; strides: [number, number]; pad: Pad } {
  const rng = new Rng(seed, Stream.Test, 9999);
  const int = (lo: number, hi: number): number => lo + rng.int(hi - lo + 1);
  const fh = int(1, 3);
  const fw = int(1, 3);
  const strides: [number, number] = [int(1, 3), int(1, 3)];
  // Pads below the filter size, so every window touches the image (see the edge cases for more).
  const kinds: Pad[] = [
    'valid',
    'same',
    [
      [0, 0],
      [int(0, fh - 1), int(0, fh - 1)],
      [int(0, fw - 1), int(0, fw - 1)],
      [0, 0],
    ],
  ];
  // tfjs sizes the output of a numeric pad from the filter height and row stride alone (on
  // every backend), so a number is meaningful only for square filters with equal strides.
  if (fh === fw && strides[0] === strides[1]) kinds.push(int(0, fh - 1));
  const pad = kinds[rng.int(kinds.length)];
  const x: Shape4 = [int(1, 3), int(fh, 9), int(fw, 9), int(1, 4)];
  return { x, filter: [fh, fw, x[3], int(1, 4)], strides, pad };
}

function describeConv(c: ReturnType<typeof convCase>): string {
  return `x [${c.x}] filter [${c.filter}] strides [${c.strides}] pad ${JSON.stringify(c.pad)}`;
}

test('wasm and cpu backends initialise, and wasm gains Conv2DBackpropFilter', async () => {
  assert.equal(await initBackend('cpu', quiet), 'cpu');
  assert.equal(backendInfo().name, 'cpu');
  assert.equal(await initBackend('wasm', quiet), 'wasm');
  const info = backendInfo();
  assert.equal(info.name, 'wasm');
  assert.equal(typeof info.simd, 'boolean');
  assert.ok(Number.isInteger(info.threads) && (info.threads ?? 0) >= 1);
  assert.deepEqual(info.extraKernels, ['Conv2DBackpropFilter']);
  assert.deepEqual(info.replacedKernels, ['Conv2DBackpropInput']);
  assert.deepEqual(info.fixedKernels, ['Conv2D', 'FusedConv2D', 'DepthwiseConv2dNative', 'FusedDepthwiseConv2D']);
  assert.ok(tf.getKernel('Conv2DBackpropFilter', 'wasm') !== undefined);
});

test('conv2d gradients (filter and input) on wasm equal cpu on random shapes, strides and paddings', async () => {
  for (let seed = 1; seed <= 40; seed++) {
    const c = convCase(seed);
    const scale = await assertWasmMatchesCpu(`conv2d ${describeConv(c)}`, seed, [{ shape: c.x }, { shape: c.filter }], (x, f) =>
      tf.conv2d(x as tf.Tensor4D, f as tf.Tensor4D, c.strides, c.pad),
    );
    assert.ok(scale > 0, `conv2d ${describeConv(c)}: gradients are all zero, so the comparison proves nothing`);
  }
});

test('conv2dTranspose gradients (filter and input) on wasm equal cpu on random shapes, strides and paddings', async () => {
  for (let seed = 101; seed <= 140; seed++) {
    const c = convCase(seed);
    // c describes the forward conv whose transpose we take: out [N,H,W,Cin] <- x [N,OH,OW,Cout].
    const info = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.strides, 1, c.pad);
    const xShape: Shape4 = [c.x[0], info.outHeight, info.outWidth, c.filter[3]];
    const label = `conv2dTranspose of ${describeConv(c)}`;
    const scale = await assertWasmMatchesCpu(label, seed, [{ shape: xShape }, { shape: c.filter }], (x, f) =>
      tf.conv2dTranspose(x as tf.Tensor4D, f as tf.Tensor4D, c.x, c.strides, c.pad),
    );
    assert.ok(scale > 0, `${label}: gradients are all zero, so the comparison proves nothing`);
  }
});

test('conv2d gradient edge cases: ScoreNet-like shapes, unread rows, windows wholly in the padding', async () => {
  const cases: Array<{ x: Shape4; filter: Shape4; strides: [number, number]; pad: Pad }> = [
    { x: [2, 28, 28, 1], filter: [3, 3, 1, 4], strides: [1, 1], pad: 'valid' },
    { x: [2, 26, 26, 4], filter: [3, 3, 4, 8], strides: [2, 2], pad: 'valid' }, // last row never read
    { x: [2, 5, 5, 8], filter: [3, 3, 8, 4], strides: [2, 2], pad: 'valid' },
    { x: [1, 6, 7, 2], filter: [3, 2, 2, 3], strides: [2, 1], pad: 'same' },
    {
      x: [2, 2, 3, 2],
      filter: [1, 1, 2, 2],
      strides: [5, 1],
      pad: [
        [0, 0],
        [3, 0],
        [0, 0],
        [0, 0],
      ],
    },
    {
      x: [2, 5, 6, 2],
      filter: [2, 2, 2, 3],
      strides: [2, 2],
      pad: [
        [0, 0],
        [3, 4],
        [2, 5],
        [0, 0],
      ],
    }, // pads > filter
    { x: [1, 7, 8, 2], filter: [1, 2, 2, 3], strides: [3, 3], pad: 'valid' }, // stride > filter: untouched rows
  ];
  for (const [i, c] of cases.entries()) {
    await assertWasmMatchesCpu(`edge ${describeConv(c)}`, 500 + i, [{ shape: c.x }, { shape: c.filter }], (x, f) =>
      tf.conv2d(x as tf.Tensor4D, f as tf.Tensor4D, c.strides, c.pad),
    );
  }
});

test("wasm convolutions with 'same' padding equal cpu where stock tfjs-backend-wasm returns zeros", async () => {
  // Stock wasm 4.22 gives all zeros for each of these (a 1-tall kernel, stride 2, even height).
  const shapes: Array<{ x: Shape4; fh: number; fw: number; strides: [number, number] }> = [
    { x: [2, 4, 4, 2], fh: 3, fw: 1, strides: [1, 2] },
    { x: [1, 4, 5, 2], fh: 1, fw: 3, strides: [2, 1] },
    { x: [1, 4, 5, 2], fh: 1, fw: 2, strides: [2, 2] },
  ];
  for (const [i, c] of shapes.entries()) {
    const label = `x [${c.x}] ${c.fh}x${c.fw} strides [${c.strides}] 'same'`;
    const cin = c.x[3];
    await assertWasmMatchesCpu(`conv2d ${label}`, 600 + i, [{ shape: c.x }, { shape: [c.fh, c.fw, cin, 3] }], (x, f) =>
      tf.conv2d(x as tf.Tensor4D, f as tf.Tensor4D, c.strides, 'same'),
    );
    await assertWasmMatchesCpu(
      `fused conv2d ${label}`,
      610 + i,
      [{ shape: c.x }, { shape: [c.fh, c.fw, cin, 3] }, { shape: [3] }],
      (x, f, b) => tf.fused.conv2d({ x: x as tf.Tensor4D, filter: f as tf.Tensor4D, strides: c.strides, pad: 'same', bias: b }),
    );
    if (c.strides[0] !== c.strides[1]) continue; // tfjs depthwise needs equal strides
    // Values only: wasm has no depthwise backprop kernels (ScoreNet uses no depthwise conv).
    const depthwise = [{ shape: c.x }, { shape: [c.fh, c.fw, cin, 2] }];
    await assertWasmMatchesCpu(
      `depthwise ${label}`,
      620 + i,
      depthwise,
      (x, f) => tf.depthwiseConv2d(x as tf.Tensor4D, f as tf.Tensor4D, c.strides, 'same'),
      false,
    );
    await assertWasmMatchesCpu(
      `fused depthwise ${label}`,
      630 + i,
      [...depthwise, { shape: [cin * 2] }],
      (x, f, b) => tf.fused.depthwiseConv2d({ x: x as tf.Tensor4D, filter: f as tf.Tensor4D, strides: c.strides, pad: 'same', bias: b }),
      false,
    );
  }
});

test('the wasm convolution kernels free their intermediates', async () => {
  await tf.setBackend('wasm');
  const run = (): void =>
    tf.tidy(() => {
      // 9 rows at stride 2: uneven residue classes, padding and a final crop in Conv2DBackpropInput.
      const x = tf.ones([2, 9, 9, 3]) as tf.Tensor4D;
      const f = tf.ones([3, 3, 3, 4]) as tf.Tensor4D;
      const dy = tf.ones([2, 4, 4, 4]) as tf.Tensor4D;
      const conv = (a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 2, 'valid'));
      const tconv = (a: tf.Tensor, b: tf.Tensor) =>
        tf.sum(tf.conv2dTranspose(a as tf.Tensor4D, b as tf.Tensor4D, [2, 9, 9, 3], 2, 'valid'));
      for (const g of [...tf.grads(conv)([x, f]), ...tf.grads(tconv)([dy, f])]) g.dataSync();
    });
  run(); // warm-up: lazily created constants may stay
  const before = { tensors: tf.memory().numTensors, data: tf.engine().backend.numDataIds() };
  for (let i = 0; i < 3; i++) run();
  assert.deepEqual({ tensors: tf.memory().numTensors, data: tf.engine().backend.numDataIds() }, before);
});

// Every op (and its gradient) a ScoreNet training step uses, on wasm against cpu.
const OPS: Array<{ name: string; inputs: Input[]; f: (...xs: tf.Tensor[]) => tf.Tensor }> = [
  { name: 'matMul', inputs: [{ shape: [3, 4] }, { shape: [4, 5] }], f: (a, b) => tf.matMul(a, b) },
  { name: 'matMul transposeA', inputs: [{ shape: [4, 3] }, { shape: [4, 5] }], f: (a, b) => tf.matMul(a, b, true) },
  { name: 'matMul transposeB', inputs: [{ shape: [3, 4] }, { shape: [5, 4] }], f: (a, b) => tf.matMul(a, b, false, true) },
  { name: 'matMul both transposed', inputs: [{ shape: [4, 3] }, { shape: [5, 4] }], f: (a, b) => tf.matMul(a, b, true, true) },
  { name: 'batched matMul', inputs: [{ shape: [2, 3, 4] }, { shape: [2, 4, 5] }], f: (a, b) => tf.matMul(a, b) },
  { name: 'sin', inputs: [{ shape: [4, 6] }], f: (x) => tf.sin(x) },
  { name: 'cos', inputs: [{ shape: [4, 6] }], f: (x) => tf.cos(x) },
  { name: 'sigmoid', inputs: [{ shape: [4, 6] }], f: (x) => tf.sigmoid(x) },
  { name: 'swish x*sigmoid(x)', inputs: [{ shape: [2, 3, 3, 4] }], f: (x) => tf.mul(x, tf.sigmoid(x)) },
  { name: 'exp', inputs: [{ shape: [4, 6] }], f: (x) => tf.exp(x) },
  { name: 'log', inputs: [{ shape: [4, 6], positive: true }], f: (x) => tf.log(x) },
  { name: 'sqrt', inputs: [{ shape: [4, 6], positive: true }], f: (x) => tf.sqrt(x) },
  { name: 'rsqrt', inputs: [{ shape: [4, 6], positive: true }], f: (x) => tf.rsqrt(x) },
  { name: 'square', inputs: [{ shape: [4, 6] }], f: (x) => tf.square(x) },
  { name: 'neg, abs', inputs: [{ shape: [4, 6] }], f: (x) => tf.neg(tf.abs(x)) },
  { name: 'mean over [1,2]', inputs: [{ shape: [2, 3, 4, 5] }], f: (x) => tf.mean(x, [1, 2]) },
  { name: 'sum over [0,3] keepDims', inputs: [{ shape: [2, 3, 4, 5] }], f: (x) => tf.sum(x, [0, 3], true) },
  {
    name: 'moments over [1,2,4] of rank 5',
    inputs: [{ shape: [2, 3, 3, 2, 4] }],
    f: (x) => {
      const m = tf.moments(x, [1, 2, 4], true);
      return tf.concat([m.mean, m.variance], 4);
    },
  },
  {
    name: 'group norm',
    inputs: [{ shape: [2, 4, 4, 8] }, { shape: [8] }, { shape: [8] }],
    f: (x, gamma, beta) => {
      const g = tf.reshape(x, [2, 4, 4, 4, 2]);
      const { mean, variance } = tf.moments(g, [1, 2, 4], true);
      const normed = tf.reshape(tf.mul(tf.sub(g, mean), tf.rsqrt(tf.add(variance, 1e-5))), [2, 4, 4, 8]);
      return tf.add(tf.mul(normed, gamma), beta);
    },
  },
  { name: 'concat axis 3', inputs: [{ shape: [2, 3, 3, 2] }, { shape: [2, 3, 3, 5] }], f: (a, b) => tf.concat([a, b], 3) },
  { name: 'reshape', inputs: [{ shape: [2, 3, 4] }], f: (x) => tf.reshape(x, [6, 4]) },
  { name: 'transpose', inputs: [{ shape: [2, 3, 4, 5] }], f: (x) => tf.transpose(x, [0, 3, 1, 2]) },
  { name: 'slice', inputs: [{ shape: [2, 6, 6, 3] }], f: (x) => tf.slice(x, [0, 1, 2, 0], [2, 4, 3, 2]) },
  {
    name: 'add/sub broadcasting',
    inputs: [{ shape: [2, 3, 4, 5] }, { shape: [5] }, { shape: [2, 1, 1, 5] }],
    f: (a, b, c) => tf.sub(tf.add(a, b), c),
  },
  {
    name: 'mul/div broadcasting',
    inputs: [{ shape: [2, 3, 4, 5] }, { shape: [2, 1, 1, 1], positive: true }, { shape: [1, 3, 1, 5] }],
    f: (a, b, c) => tf.div(tf.mul(a, c), b),
  },
  { name: 'scalar ops', inputs: [{ shape: [3, 4] }], f: (x) => tf.div(tf.add(tf.mul(x, 2), 1), 3) },
  { name: 'maximum', inputs: [{ shape: [4, 6] }, { shape: [4, 6] }], f: (a, b) => tf.maximum(a, b) },
  { name: 'clipByValue', inputs: [{ shape: [4, 6] }], f: (x) => tf.clipByValue(x, -0.5, 0.7) },
  {
    name: 'conv2d + bias',
    inputs: [{ shape: [2, 7, 7, 3] }, { shape: [3, 3, 3, 4] }, { shape: [4] }],
    f: (x, w, b) => tf.add(tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 2, 'valid'), b),
  },
  {
    name: 'dense time embedding added to a feature map',
    inputs: [{ shape: [2, 5, 5, 4] }, { shape: [2, 6] }, { shape: [6, 4] }],
    f: (h, e, w) => tf.add(h, tf.reshape(tf.matMul(e, w), [2, 1, 1, 4])),
  },
];

test('every op of a ScoreNet training step, and its gradient, exists on wasm and equals cpu', async () => {
  for (const [i, op] of OPS.entries()) {
    await assertWasmMatchesCpu(op.name, 700 + i, op.inputs, op.f);
  }
});

function isInstalled(pkg: string): boolean {
  try {
    createRequire(import.meta.url).resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

test("initBackend('tensorflow') without tfjs-node fails with one line naming what to install", async () => {
  const installed = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'].some(isInstalled);
  const lines: string[] = [];
  const attempt = initBackend('tensorflow', { log: (l) => lines.push(l) });
  if (installed) {
    // Here only when someone installed it: then it must load and be what runs.
    assert.equal(await attempt, 'tensorflow');
    assert.equal(tf.getBackend(), 'tensorflow');
    return;
  }
  await assert.rejects(attempt, (e: Error) => {
    assert.doesNotMatch(e.message, /\n/);
    assert.match(e.message, /^tensorflow backend unavailable: /);
    assert.match(e.message, /npm install @tensorflow\/tfjs-node`/);
    assert.match(e.message, /@tensorflow\/tfjs-node-gpu/);
    assert.match(e.message, /libtensorflow/);
    return true;
  });
  assert.deepEqual(lines, []);
});

test("initBackend('torch') either runs torch or fails with one line", async () => {
  try {
    assert.equal(await initBackend('torch', quiet), 'torch');
    assert.equal(tf.getBackend(), 'torch');
  } catch (e) {
    assert.ok(e instanceof Error && !(e instanceof assert.AssertionError), String(e));
    assert.match(e.message, /^torch backend unavailable: \S/);
    assert.doesNotMatch(e.message, /\n/);
  }
});

test('an unknown backend name fails with one line listing the valid names', async () => {
  await assert.rejects(initBackend('tpu' as BackendName, quiet), (e: Error) => {
    assert.doesNotMatch(e.message, /\n/);
    assert.match(e.message, /'tpu'/);
    for (const name of BACKEND_NAMES) assert.ok(e.message.includes(name), `message lacks ${name}: ${e.message}`);
    return true;
  });
});

test('a bad thread count is refused', async () => {
  await assert.rejects(initBackend('wasm', { threads: 0, ...quiet }), /threads must be a positive integer/);
  await assert.rejects(initBackend('wasm', { threads: 1.5, ...quiet }), /threads must be a positive integer/);
});

test('wasm takes a thread count and reports the one it uses', async () => {
  const lines: string[] = [];
  assert.equal(await initBackend('wasm', { threads: 2, log: (l) => lines.push(l) }), 'wasm');
  const used = backendInfo().threads;
  assert.equal(lines.length, 1);
  assert.match(lines[0], new RegExp(`^backend: wasm \\((no )?simd, ${used} threads?`));
  // Under Node 20 tfjs-backend-wasm 4.22 is single-threaded (parallelism comes from GradPool threads).
  assert.ok(used === 1 || used === 2, `threads ${used}`);
});

test('auto picks the first backend that loads, and logs it with why the faster ones were skipped', async () => {
  const lines: string[] = [];
  const name = await initBackend('auto', { log: (l) => lines.push(l) });
  assert.ok((AUTO_ORDER as readonly string[]).includes(name), name);
  assert.equal(tf.getBackend(), name);
  assert.equal(backendInfo().name, name);
  assert.equal(lines.length, 1, lines.join('\n'));
  assert.doesNotMatch(lines[0], /\n/);
  assert.ok(lines[0].startsWith(`backend: ${name}`), lines[0]);
  for (const faster of AUTO_ORDER.slice(0, AUTO_ORDER.indexOf(name as (typeof AUTO_ORDER)[number]))) {
    assert.match(lines[0], new RegExp(`${faster} unavailable: \\S`));
  }
  // wasm is always installable from npm, so auto never falls below it.
  assert.notEqual(name, 'cpu');
});

test("default threads: the affinity mask capped by the cgroup's CPU limit (v2 cpu.max, v1 cfs quota), rounded down, at least 1", () => {
  const root = mkdtempSync(join(tmpdir(), 'sf-cgroup-'));
  try {
    const cores = availableParallelism();
    const v2 = (text: string) => {
      rmSync(join(root, 'cpu'), { recursive: true, force: true });
      writeFileSync(join(root, 'cpu.max'), text);
    };
    v2('max 100000\n');
    assert.equal(cgroupCpuLimit(root), undefined);
    assert.equal(computeCores(root), cores);
    v2('250000 100000\n');
    assert.equal(cgroupCpuLimit(root), 2.5);
    assert.equal(computeCores(root), Math.min(cores, 2));
    v2('50000 100000\n');
    assert.equal(computeCores(root), 1, 'half a CPU still computes on one thread');
    // cgroup v1 (this machine's hybrid layout): quota -1 is no limit
    rmSync(join(root, 'cpu.max'));
    mkdirSync(join(root, 'cpu'));
    writeFileSync(join(root, 'cpu', 'cpu.cfs_period_us'), '100000\n');
    writeFileSync(join(root, 'cpu', 'cpu.cfs_quota_us'), '-1\n');
    assert.equal(cgroupCpuLimit(root), undefined);
    writeFileSync(join(root, 'cpu', 'cpu.cfs_quota_us'), '100000\n');
    assert.equal(cgroupCpuLimit(root), 1);
    assert.equal(computeCores(root), 1);
    assert.equal(cgroupCpuLimit(join(root, 'nothing-here')), undefined, 'no cgroup files: no limit');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
