/**
 * The `torch` backend against tfjs's pure-JS `cpu` backend: every kernel it implements, on seeded
 * random inputs (broadcasting, strides, paddings, dtypes), gradients through the convolutions and a
 * small ScoreNet, the fused GroupNorm, leaks, and the errors it gives.
 *
 * The addon must be built (CI installs libtorch-dev, and `npm ci` builds it): when it is missing
 * or does not load, these tests fail rather than skip.
 */
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import {
  TORCH_KERNELS,
  registerTorchBackend,
  setFusedGroupNormImpl,
  torchInfo,
  torchKernelCalls,
  torchLiveTensors,
} from '../src/core/backend/torch/index.js';
import { groupNormAct } from '../src/core/backend/fused.js';
import { ScoreNet } from '../src/core/model/scorenet.js';
import { modelConfig } from '../src/core/model/config.js';
import { initParams } from '../src/core/model/params.js';
import { makeSde } from '../src/core/sde.js';
import { dsmLossPerSample } from '../src/core/loss.js';
import { Rng, Stream } from '../src/core/rng.js';
import { runParity } from '../src/core/parity.js';
import { packagePath } from '../src/core/paths.js';

const ready: Promise<Error | null> = registerTorchBackend({ threads: 2 }).then(
  () => null,
  (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
);

async function torchReady(): Promise<void> {
  const err = await ready;
  if (err) throw new Error(`torch backend unavailable (build it with: node native/build.mjs --force): ${err.message}`);
}

// ------------------------------------------------------------------ seeded data and comparison

let stream = 0;
/** Fresh seeded values: normal, or uniform in [lo, hi). */
function rand(n: number, lo?: number, hi?: number): Float32Array {
  const rng = new Rng(7, Stream.Test, stream++);
  return lo === undefined ? rng.normal(n) : rng.uniformArray(n, lo, hi ?? 1);
}
const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** A recipe for an input: the same values whichever backend builds it. */
interface Spec {
  shape: number[];
  dtype?: 'float32' | 'int32' | 'bool';
  lo?: number;
  hi?: number;
  special?: boolean; // sprinkle NaN, +-Infinity and zeros
}

function values(spec: Spec): Float32Array | Int32Array | Uint8Array {
  const n = size(spec.shape);
  if (spec.dtype === 'bool') return Uint8Array.from(rand(n, 0, 1), (v) => (v < 0.5 ? 1 : 0));
  if (spec.dtype === 'int32') return Int32Array.from(rand(n, spec.lo ?? -20, spec.hi ?? 20), Math.floor);
  const v = rand(n, spec.lo, spec.hi);
  if (spec.special) {
    const sp = [NaN, Infinity, -Infinity, 0];
    for (let i = 0; i < n; i += 5) v[i] = sp[(i / 5) % 4];
  }
  return v;
}

interface Result {
  shape: number[];
  dtype: string;
  values: number[];
}

/**
 * Runs `f` on tensors made from `specs` on the cpu backend and on torch; returns both results.
 * Inputs are generated once, so both backends see the same numbers.
 */
async function both(specs: Spec[], f: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[]): Promise<[Result[], Result[]]> {
  await torchReady();
  const data = specs.map(values);
  const run = async (backend: string): Promise<Result[]> => {
    await tf.setBackend(backend);
    const outs = tf.tidy(() => {
      const xs = specs.map((s, i) => tf.tensor(data[i], s.shape, s.dtype ?? 'float32'));
      const y = f(...xs);
      return Array.isArray(y) ? y : [y];
    });
    const res = outs.map((t) => ({ shape: t.shape, dtype: t.dtype, values: Array.from(t.dataSync()) }));
    tf.dispose(outs);
    return res;
  };
  return [await run('cpu'), await run('torch')];
}

/**
 * Elementwise |torch - cpu| <= atol + rtol |cpu|, with atol scaled by the largest |cpu| value
 * when `scaled` (sums over many terms in another order); NaN must match NaN, infinities exactly.
 */
function assertClose(cpu: Result[], torch: Result[], what: string, tol: { rtol?: number; atol?: number; scaled?: boolean } = {}) {
  const rtol = tol.rtol ?? 2e-6;
  assert.equal(torch.length, cpu.length, `${what}: number of outputs`);
  cpu.forEach((c, k) => {
    const t = torch[k];
    assert.deepEqual(t.shape, c.shape, `${what}[${k}]: shape`);
    assert.equal(t.dtype, c.dtype, `${what}[${k}]: dtype`);
    let scale = 1;
    if (tol.scaled) for (const v of c.values) if (Number.isFinite(v)) scale = Math.max(scale, Math.abs(v));
    const atol = (tol.atol ?? 1e-6) * scale;
    for (let i = 0; i < c.values.length; i++) {
      const a = t.values[i];
      const e = c.values[i];
      if (Number.isNaN(e)) {
        assert.ok(Number.isNaN(a), `${what}[${k}] at ${i}: expected NaN, got ${a}`);
      } else if (!Number.isFinite(e)) {
        assert.equal(a, e, `${what}[${k}] at ${i}`);
      } else {
        assert.ok(Math.abs(a - e) <= atol + rtol * Math.abs(e), `${what}[${k}] at ${i}: torch ${a}, cpu ${e}`);
      }
    }
  });
}

async function check(what: string, specs: Spec[], f: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[], tol = {}) {
  const [cpu, torch] = await both(specs, f);
  assertClose(cpu, torch, what, tol);
}

/** Value and gradients (w.r.t. every input) of sum(f(xs) * w) for a fixed random cotangent w. */
function withGrads(f: (...xs: tf.Tensor[]) => tf.Tensor): (...xs: tf.Tensor[]) => tf.Tensor[] {
  return (...xs) => {
    const y0 = f(...xs);
    const w = tf.tensor(rand(size(y0.shape)), y0.shape);
    stream--; // the same cotangent on both backends
    const { value, grads } = tf.valueAndGrads((...ys: tf.Tensor[]) => tf.sum(tf.mul(f(...ys), w)) as tf.Scalar)(xs);
    return [y0, value, ...grads];
  };
}

// ------------------------------------------------------------------ the addon

test('the addon is built, loads, and reports its libtorch', async () => {
  await torchReady();
  const info = torchInfo();
  assert.equal(typeof info.cuda, 'boolean');
  assert.ok(info.threads >= 1);
  assert.equal(tf.getBackend(), 'torch');
});

test('write/read round trips float32, int32 and bool, sync and async; memory() reports libtorch', async () => {
  await torchReady();
  await tf.setBackend('torch');
  const f = tf.tensor([1.5, -2, 3e-8, NaN], [2, 2]);
  const i = tf.tensor([1, -7, 2147483647, -2147483648], [4], 'int32');
  const b = tf.tensor([1, 0, 1], [3], 'bool');
  assert.deepEqual(Array.from(f.dataSync()), [1.5, -2, Math.fround(3e-8), NaN]);
  assert.deepEqual(Array.from(await i.data()), [1, -7, 2147483647, -2147483648]);
  assert.ok(b.dataSync() instanceof Uint8Array);
  assert.deepEqual(Array.from(b.dataSync()), [1, 0, 1]);
  const empty = tf.tensor([], [0, 3]);
  assert.deepEqual(Array.from(empty.dataSync()), []);
  const mem = tf.memory() as tf.MemoryInfo & { numTorchTensors: number; numTorchBytes: number };
  assert.ok(mem.numTorchTensors >= 4);
  assert.ok(mem.numTorchBytes >= 16 + 16 + 3);
  tf.dispose([f, i, b, empty]);
});

test('tensors made on another backend move to torch on first use', async () => {
  await torchReady();
  await tf.setBackend('cpu');
  const a = tf.tensor([1, 2, 3]);
  await tf.setBackend('torch');
  const y = tf.mul(a, 2);
  assert.deepEqual(Array.from(y.dataSync()), [2, 4, 6]);
  tf.dispose([a, y]);
});

// ------------------------------------------------------------------ elementwise

const F = (shape: number[], lo?: number, hi?: number): Spec => ({ shape, lo, hi });
const I = (shape: number[], lo?: number, hi?: number): Spec => ({ shape, dtype: 'int32', lo, hi });
const Bo = (shape: number[]): Spec => ({ shape, dtype: 'bool' });

test('unary kernels match cpu (float32, int32, NaN and infinities)', async () => {
  const s = [3, 4, 5];
  const unary: [string, (x: tf.Tensor) => tf.Tensor, number?, number?][] = [
    ['neg', tf.neg],
    ['square', tf.square],
    ['sqrt', tf.sqrt, 0.01, 5],
    ['rsqrt', tf.rsqrt, 0.01, 5],
    ['exp', tf.exp],
    ['log', tf.log, 0.01, 5],
    ['sin', tf.sin],
    ['cos', tf.cos],
    ['tan', tf.tan, -1.2, 1.2],
    ['asin', tf.asin, -0.99, 0.99],
    ['acos', tf.acos, -0.99, 0.99],
    ['atan', tf.atan],
    ['sinh', tf.sinh],
    ['cosh', tf.cosh],
    ['asinh', tf.asinh],
    ['acosh', tf.acosh, 1.01, 5],
    ['atanh', tf.atanh, -0.99, 0.99],
    ['sigmoid', tf.sigmoid],
    ['tanh', tf.tanh],
    ['relu', tf.relu],
    ['relu6', (x) => tf.relu6(tf.mul(x, 4))],
    ['abs', tf.abs],
    ['sign', tf.sign],
    ['reciprocal', tf.reciprocal, 0.1, 3],
    ['expm1', tf.expm1],
    ['log1p', tf.log1p, -0.9, 5],
    ['softplus', (x) => tf.softplus(tf.mul(x, 10))],
    ['floor', (x) => tf.floor(tf.mul(x, 3))],
    ['ceil', (x) => tf.ceil(tf.mul(x, 3))],
    ['round', (x) => tf.round(tf.mul(x, 3))],
    ['erf', tf.erf],
    ['elu', tf.elu],
    ['selu', tf.selu],
    ['step', (x) => tf.step(x, 0.3)],
    ['leakyRelu', (x) => tf.leakyRelu(x, 0.1)],
    ['clipByValue', (x) => tf.clipByValue(x, -0.5, 0.7)],
    ['zerosLike', tf.zerosLike],
    ['onesLike', tf.onesLike],
    ['clone', tf.clone],
  ];
  for (const [name, f, lo, hi] of unary) await check(name, [F(s, lo, hi)], f, { rtol: 2e-6, atol: 1e-6 });
  await check('round half to even', [], () => tf.round(tf.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])));
  for (const [name, f] of [
    ['isNaN', tf.isNaN],
    ['isInf', tf.isInf],
    ['isFinite', tf.isFinite],
    ['neg', tf.neg],
    ['exp', tf.exp],
    ['sigmoid', tf.sigmoid],
  ] as const) {
    await check(`${name} with NaN/Inf`, [{ shape: [4, 5], special: true }], f);
  }
  for (const [name, f] of [
    ['neg', tf.neg],
    ['abs', tf.abs],
    ['square', tf.square],
    ['relu', tf.relu],
    ['sign', tf.sign],
  ] as const) {
    await check(`${name} int32`, [I(s)], f);
  }
  await check('logicalNot', [Bo(s)], tf.logicalNot);
});

test('Cast between float32, int32 and bool', async () => {
  const casts: ['float32' | 'int32' | 'bool', Spec][] = [
    ['int32', F([5, 4], -10, 10)],
    ['bool', F([5, 4], -1, 1)],
    ['float32', I([5, 4])],
    ['bool', I([5, 4], -2, 2)],
    ['float32', Bo([5, 4])],
    ['int32', Bo([5, 4])],
    ['float32', F([5, 4])],
  ];
  for (const [to, spec] of casts) await check(`cast ${spec.dtype ?? 'float32'} -> ${to}`, [spec], (x) => tf.cast(x, to));
});

const BROADCASTS: [number[], number[]][] = [
  [
    [2, 3, 4],
    [2, 3, 4],
  ],
  [[2, 3, 4], [4]],
  [
    [2, 3, 4],
    [3, 1],
  ],
  [
    [1, 3, 1],
    [2, 1, 4],
  ],
  [[2, 3, 4], []],
  [[], [5]],
  [
    [4, 1, 1, 6],
    [4, 5, 7, 6],
  ],
];

test('binary kernels match cpu, with broadcasting', async () => {
  const binary: [string, (a: tf.Tensor, b: tf.Tensor) => tf.Tensor, number?, number?][] = [
    ['add', tf.add],
    ['sub', tf.sub],
    ['mul', tf.mul],
    ['div', tf.div],
    ['maximum', tf.maximum],
    ['minimum', tf.minimum],
    ['pow', tf.pow, 0.1, 2],
    ['squaredDifference', tf.squaredDifference],
    ['atan2', tf.atan2],
    ['floorDiv', tf.floorDiv],
    ['mod', tf.mod],
    ['greater', tf.greater],
    ['greaterEqual', tf.greaterEqual],
    ['less', tf.less],
    ['lessEqual', tf.lessEqual],
    ['equal', (a, b) => tf.equal(tf.round(a), tf.round(b))],
    ['notEqual', (a, b) => tf.notEqual(tf.round(a), tf.round(b))],
    ['prelu', tf.prelu],
  ];
  for (const [name, f, lo, hi] of binary) {
    for (const [sa, sb] of BROADCASTS) {
      if (name === 'prelu' && sb.length > sa.length) continue;
      await check(`${name} ${JSON.stringify(sa)} ${JSON.stringify(sb)}`, [F(sa, lo, hi), F(sb, lo, hi)], f, { rtol: 1e-5 });
    }
  }
  for (const [name, f] of [
    ['add', tf.add],
    ['sub', tf.sub],
    ['mul', tf.mul],
    ['maximum', tf.maximum],
    ['minimum', tf.minimum],
    ['floorDiv', tf.floorDiv],
    ['mod', tf.mod],
    ['div', tf.div],
    ['greater', tf.greater],
    ['equal', tf.equal],
  ] as const) {
    await check(`${name} int32`, [I([3, 4]), I([4], 1, 9)], f);
  }
  for (const [name, f] of [
    ['logicalAnd', tf.logicalAnd],
    ['logicalOr', tf.logicalOr],
    ['logicalXor (composite)', tf.logicalXor],
  ] as const) {
    await check(name, [Bo([3, 4]), Bo([3, 1])], f);
  }
  await check('addN', [F([3, 4]), F([3, 4]), F([3, 4]), F([3, 4])], (...xs) => tf.addN(xs));
  await check('elu and its gradient (EluGrad)', [F([3, 4])], withGrads(tf.elu), { rtol: 1e-5 });
  await check(
    'gradients of sigmoid, tanh, sqrt, square, relu, max',
    [F([3, 4], 0.1, 2)],
    withGrads((x) => tf.add(tf.addN([tf.sigmoid(x), tf.tanh(x), tf.sqrt(x), tf.square(x), tf.relu(x)]), tf.max(x, 1, true))),
    { rtol: 1e-5 },
  );
  await check('addN of one', [F([3, 4])], (x) => tf.addN([x]));
});

// ------------------------------------------------------------------ reductions

test('reductions match cpu over every axis choice, with and without keepDims', async () => {
  const axes: (number | number[] | undefined)[] = [undefined, 0, 1, 2, -1, [0, 2], [1, 2], [0, 1, 2], []];
  for (const axis of axes) {
    for (const keep of [false, true]) {
      const tag = `axis ${JSON.stringify(axis)} keep ${keep}`;
      await check(`sum ${tag}`, [F([3, 4, 5])], (x) => tf.sum(x, axis, keep), { rtol: 1e-5, atol: 1e-5 });
      await check(`mean ${tag}`, [F([3, 4, 5])], (x) => tf.mean(x, axis, keep), { rtol: 1e-5, atol: 1e-6 });
      await check(`max ${tag}`, [F([3, 4, 5])], (x) => tf.max(x, axis, keep));
      await check(`min ${tag}`, [F([3, 4, 5])], (x) => tf.min(x, axis, keep));
      await check(`prod ${tag}`, [F([3, 4, 5], 0.5, 1.5)], (x) => tf.prod(x, axis, keep), { rtol: 1e-5 });
      await check(`sum int32 ${tag}`, [I([3, 4, 5])], (x) => tf.sum(x, axis, keep));
      await check(`any ${tag}`, [Bo([3, 4, 5])], (x) => tf.any(x, axis, keep));
      await check(`all ${tag}`, [Bo([3, 4, 5])], (x) => tf.all(x, axis, keep));
    }
  }
  await check('mean int32', [I([4, 6])], (x) => tf.mean(x, 1));
  await check('sum bool', [Bo([4, 6])], (x) => tf.sum(x, 0));
  await check(
    'moments',
    [F([2, 5, 5, 6])],
    (x) => {
      const { mean, variance } = tf.moments(x, [1, 2], true);
      return [mean, variance];
    },
    { rtol: 1e-5, atol: 1e-6 },
  );
  for (const axis of [0, 1, -1]) {
    await check(`argMax ${axis}`, [F([4, 7])], (x) => tf.argMax(x, axis));
    await check(`argMin ${axis}`, [F([4, 7])], (x) => tf.argMin(x, axis));
  }
  await check('softmax', [F([3, 7])], (x) => tf.softmax(x), { rtol: 1e-5 });
  for (const [exclusive, reverse] of [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ]) {
    await check(`cumsum ${exclusive} ${reverse}`, [F([3, 6])], (x) => tf.cumsum(x, 1, exclusive, reverse), { rtol: 1e-5, atol: 1e-6 });
    await check(`cumprod ${exclusive} ${reverse}`, [F([6, 3], 0.5, 1.5)], (x) => tf.cumprod(x, 0, exclusive, reverse), { rtol: 1e-5 });
  }
  await check('cumsum int32', [I([5])], (x) => tf.cumsum(x));
});

// ------------------------------------------------------------------ shapes and layout

test('shape kernels match cpu: reshape, transpose, slice, stridedSlice, concat, stack, split, pad, tile, ...', async () => {
  const x = F([2, 3, 4, 5]);
  await check('reshape', [x], (t) => tf.reshape(t, [6, -1]));
  await check('reshape of a transpose', [x], (t) => tf.reshape(tf.transpose(t, [3, 1, 0, 2]), [5, 24]));
  for (const perm of [
    [0, 1, 2, 3],
    [3, 2, 1, 0],
    [0, 2, 3, 1],
    [1, 0, 3, 2],
  ]) {
    await check(`transpose ${perm}`, [x], (t) => tf.add(tf.transpose(t, perm), 1));
  }
  await check('expandDims/squeeze', [F([3, 4])], (t) => [tf.expandDims(t, 1), tf.expandDims(t, -1), tf.squeeze(tf.expandDims(t, 0))]);
  await check('slice', [x], (t) => [tf.slice(t, [1, 0, 2, 1], [1, -1, 2, 3]), tf.slice(t, [0, 1], [2, 2])]);
  const strided: [number[], number[], number[], number[]][] = [
    // begin, end, strides, [beginMask, endMask, ellipsisMask, newAxisMask, shrinkAxisMask]
    [
      [0, 0, 0, 0],
      [2, 3, 4, 5],
      [1, 1, 1, 1],
      [0, 0, 0, 0, 0],
    ],
    [
      [1, 0, 1, 0],
      [2, 3, 4, 5],
      [1, 2, 2, 3],
      [0, 0, 0, 0, 0],
    ],
    [
      [0, 2, 3, 4],
      [2, 0, 0, 0],
      [1, -1, -2, -2],
      [1, 0, 0, 0, 0],
    ],
    [
      [0, 1, 0, 0],
      [0, 2, 0, 0],
      [1, 1, 1, 1],
      [13, 13, 0, 0, 2],
    ],
    [
      [1, 0],
      [2, 0],
      [1, 1],
      [0, 2, 0, 0, 1],
    ],
    [
      [0, 0],
      [0, 0],
      [1, 1],
      [0, 0, 1, 0, 0],
    ],
    [
      [0, 0, 0],
      [1, 2, 3],
      [1, 1, 1],
      [0, 0, 0, 2, 0],
    ],
    [
      [-1, -2],
      [0, 0],
      [-1, -1],
      [0, 3, 0, 0, 0],
    ],
  ];
  for (const [b, e, s, [bm, em, elm, nam, sam]] of strided) {
    await check(`stridedSlice ${b} ${e} ${s} ${[bm, em, elm, nam, sam]}`, [x], (t) => tf.stridedSlice(t, b, e, s, bm, em, elm, nam, sam));
  }
  for (const axis of [0, 1, 2, 3, -1]) {
    const other = [2, 3, 4, 5];
    other[(axis + 4) % 4] = 2;
    await check(`concat axis ${axis}`, [x, F(other), x], (a, b, c) => tf.concat([a, b, c], axis));
  }
  await check('concat with empty', [F([2, 3]), F([0, 3]), F([1, 3])], (a, b, c) => tf.concat([a, b, c], 0));
  await check('concat int32', [I([2, 3]), I([2, 2])], (a, b) => tf.concat([a, b], 1));
  await check('stack/unstack', [F([3, 4]), F([3, 4])], (a, b) => [tf.stack([a, b], 1), ...tf.unstack(a, 1)]);
  await check('split', [x], (t) => [...tf.split(t, 2, 0), ...tf.split(t, [1, 3, 1], 3), ...tf.split(t, [2, -1], 2)]);
  await check('pad', [F([2, 3, 4])], (t) => [
    tf.pad(t, [
      [1, 0],
      [0, 2],
      [3, 1],
    ]),
    tf.pad(
      t,
      [
        [0, 0],
        [1, 1],
        [0, 0],
      ],
      2.5,
    ),
  ]);
  await check('tile', [F([2, 3])], (t) => [tf.tile(t, [2, 3]), tf.tile(t, [1, 1])]);
  await check('reverse', [x], (t) => [tf.reverse(t, 1), tf.reverse(t, [0, 3]), tf.reverse(t)]);
  await check('broadcastTo', [F([3, 1])], (t) => tf.add(tf.broadcastTo(t, [2, 3, 4]), 0));
  await check('gather', [F([5, 4]), I([6], 0, 5)], (t, i) => [tf.gather(t, i), tf.gather(t, tf.clipByValue(i, 0, 3), 1)]);
  await check('gather 2-D indices', [F([5, 4]), I([2, 3], 0, 5)], (t, i) => tf.gather(t, i));
  await check('oneHot', [I([6], -1, 5)], (i) => [tf.oneHot(i, 4), tf.oneHot(i, 5, 2, -1)]);
  await check('range', [], () => [tf.range(0, 10, 3), tf.range(5, -2, -1.5), tf.range(0, 4, 1, 'int32'), tf.range(3, 3)]);
  await check('fill/zeros/ones', [], () => [tf.fill([2, 3], 1.5), tf.fill([3], 7, 'int32'), tf.zeros([2, 2]), tf.ones([3], 'int32')]);
  await check('linspace', [], () => tf.linspace(-1, 2, 7), { rtol: 1e-6 });
  await check('where', [Bo([3, 4]), F([3, 4]), F([3, 4])], (c, a, b) => tf.where(c, a, b));
  // A rank-1 condition selects rows (TensorFlow's Select). The cpu kernel gets this case wrong, so
  // its reference is the broadcast form.
  await check('Select with a rank-1 condition (row select)', [Bo([3]), F([3, 4]), F([3, 4])], (c, a, b) =>
    tf.getBackend() === 'cpu'
      ? tf.where(tf.reshape(c, [3, 1]), a, b)
      : (tf.engine().runKernel('Select', { condition: c, t: a, e: b }) as tf.Tensor),
  );
  await check('where, broadcast', [Bo([3, 1]), F([3, 4]), F([1, 4])], (c, a, b) => tf.where(c, a, b));
});

// ------------------------------------------------------------------ matmul and convolution

test('matMul and fused matMul match cpu (transposes, batches, broadcasting, activations)', async () => {
  const cases: [number[], number[], boolean, boolean][] = [
    [[3, 4], [4, 5], false, false],
    [[4, 3], [4, 5], true, false],
    [[3, 4], [5, 4], false, true],
    [[4, 3], [5, 4], true, true],
    [[2, 3, 4], [2, 4, 5], false, false],
    [[2, 4, 3], [2, 5, 4], true, true],
    [[1, 3, 4], [6, 4, 2], false, false],
    [[32, 256], [256, 64], false, false],
  ];
  for (const [sa, sb, ta, tb] of cases) {
    await check(`matMul ${sa} ${sb} ${ta} ${tb}`, [F(sa), F(sb)], (a, b) => tf.matMul(a, b, ta, tb), {
      rtol: 1e-5,
      atol: 1e-5,
      scaled: true,
    });
  }
  for (const activation of ['linear', 'relu', 'relu6', 'elu', 'sigmoid', 'leakyrelu', 'prelu'] as const) {
    await check(
      `fused matMul ${activation}`,
      [F([3, 4]), F([4, 5]), F([5]), F([5])],
      (a, b, bias, alpha) =>
        tf.fused.matMul({
          a,
          b,
          bias,
          activation,
          preluActivationWeights: activation === 'prelu' ? alpha : undefined,
          leakyreluAlpha: 0.3,
        }),
      { rtol: 1e-5, atol: 1e-5, scaled: true },
    );
  }
  await check(
    'fused matMul, no bias, transposed',
    [F([4, 3]), F([5, 4])],
    (a, b) => tf.fused.matMul({ a, b, transposeA: true, transposeB: true, activation: 'relu' }),
    { rtol: 1e-5, atol: 1e-5, scaled: true },
  );
});

type Pad = 'valid' | 'same' | number | [[0, 0], [number, number], [number, number], [number, number]];
interface ConvCase {
  x: [number, number, number, number];
  k: [number, number];
  out: number;
  stride: number | [number, number];
  pad: Pad;
  dilation?: number;
}

const CONVS: ConvCase[] = [
  { x: [2, 7, 7, 3], k: [3, 3], out: 4, stride: 1, pad: 'valid' },
  { x: [2, 7, 7, 3], k: [3, 3], out: 4, stride: 1, pad: 'same' },
  { x: [2, 8, 7, 3], k: [3, 3], out: 5, stride: 2, pad: 'valid' },
  { x: [2, 8, 7, 3], k: [3, 3], out: 5, stride: 2, pad: 'same' },
  { x: [3, 9, 8, 2], k: [2, 3], out: 3, stride: [2, 1], pad: 'same' },
  { x: [1, 6, 6, 4], k: [1, 1], out: 6, stride: 1, pad: 'valid' },
  { x: [2, 7, 6, 3], k: [3, 3], out: 2, stride: 1, pad: 1 },
  {
    x: [2, 7, 6, 3],
    k: [3, 2],
    out: 2,
    stride: 2,
    pad: [
      [0, 0],
      [1, 2],
      [0, 1],
    ] as unknown as Pad,
  },
  {
    x: [2, 7, 6, 3],
    k: [3, 3],
    out: 2,
    stride: 1,
    pad: [
      [0, 0],
      [2, 0],
      [1, 1],
      [0, 0],
    ],
  },
  { x: [2, 9, 9, 2], k: [3, 3], out: 3, stride: 1, pad: 'same', dilation: 2 },
  { x: [2, 9, 9, 2], k: [3, 3], out: 3, stride: 1, pad: 'valid', dilation: 2 },
  { x: [16, 26, 26, 32], k: [3, 3], out: 64, stride: 2, pad: 'valid' },
];

function explicitPad(pad: Pad): Pad {
  // tfjs spells explicit padding as [[0,0],[top,bottom],[left,right],[0,0]].
  if (Array.isArray(pad) && (pad as unknown[]).length === 3) {
    const p = pad as unknown as [number, number][];
    return [[0, 0], p[1], p[2], [0, 0]];
  }
  return pad;
}

test('conv2d forward and both gradients match cpu (strides 1/2, valid/same/explicit/number pads, dilation)', async () => {
  for (const c of CONVS) {
    const pad = explicitPad(c.pad);
    const tag = `conv2d x${c.x} k${c.k} s${c.stride} pad ${JSON.stringify(pad)} d${c.dilation ?? 1}`;
    const f = (x: tf.Tensor, w: tf.Tensor) =>
      tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, c.stride, pad as 'valid', 'NHWC', c.dilation ?? 1);
    const specs = [F(c.x), F([...c.k, c.x[3], c.out])];
    if ((c.dilation ?? 1) > 1) await check(tag, specs, f, { rtol: 1e-5, atol: 1e-5, scaled: true });
    else await check(tag, specs, withGrads(f), { rtol: 1e-4, atol: 2e-5, scaled: true });
  }
});

test('conv2dTranspose (Conv2DBackpropInput) forward and gradients match cpu, with PyTorch output_padding', async () => {
  const cases: { x: [number, number, number, number]; out: number; stride: number; pad: 'valid' | 'same'; extra: number }[] = [
    { x: [2, 2, 2, 8], out: 4, stride: 2, pad: 'valid', extra: 0 },
    { x: [2, 5, 5, 8], out: 4, stride: 2, pad: 'valid', extra: 1 },
    { x: [2, 4, 4, 3], out: 2, stride: 1, pad: 'valid', extra: 0 },
    { x: [2, 4, 3, 3], out: 5, stride: 2, pad: 'same', extra: 0 },
    { x: [2, 4, 3, 3], out: 5, stride: 1, pad: 'same', extra: 0 },
  ];
  for (const c of cases) {
    const [n, h, w] = c.x;
    const oh = c.pad === 'same' ? h * c.stride : (h - 1) * c.stride + 3 + c.extra;
    const ow = c.pad === 'same' ? w * c.stride : (w - 1) * c.stride + 3 + c.extra;
    const f = (x: tf.Tensor, k: tf.Tensor) => tf.conv2dTranspose(x as tf.Tensor4D, k as tf.Tensor4D, [n, oh, ow, c.out], c.stride, c.pad);
    await check(
      `conv2dTranspose x${c.x} out ${c.out} s${c.stride} ${c.pad} +${c.extra}`,
      [F(c.x), F([3, 3, c.out, c.x[3]])],
      withGrads(f),
      {
        rtol: 1e-4,
        atol: 2e-5,
        scaled: true,
      },
    );
  }
});

test('fused conv2d (bias, activations) matches cpu', async () => {
  for (const activation of ['linear', 'relu', 'sigmoid', 'leakyrelu', 'prelu', 'elu', 'relu6'] as const) {
    await check(
      `fused conv2d ${activation}`,
      [F([2, 6, 6, 3]), F([3, 3, 3, 4]), F([4]), F([4])],
      (x, w, bias, alpha) =>
        tf.fused.conv2d({
          x: x as tf.Tensor4D,
          filter: w as tf.Tensor4D,
          strides: 1,
          pad: 'same',
          bias,
          activation,
          preluActivationWeights: activation === 'prelu' ? alpha : undefined,
          leakyreluAlpha: 0.2,
        }),
      { rtol: 1e-5, atol: 1e-5, scaled: true },
    );
  }
});

// ------------------------------------------------------------------ fused GroupNorm and the ScoreNet

test('groupNormAct (fused kernel, both implementations) matches the tfjs decomposition on cpu, values and gradients', async () => {
  const cases: { x: [number, number, number, number]; groups: number; swish: boolean; shift: boolean }[] = [
    { x: [2, 5, 4, 8], groups: 4, swish: true, shift: true },
    { x: [3, 3, 3, 8], groups: 8, swish: true, shift: true },
    { x: [2, 6, 5, 6], groups: 1, swish: false, shift: true },
    { x: [2, 4, 4, 12], groups: 3, swish: true, shift: false },
    { x: [4, 13, 13, 32], groups: 32, swish: true, shift: true },
  ];
  try {
    for (const impl of ['native', 'aten'] as const) {
      setFusedGroupNormImpl(impl);
      for (const c of cases) {
        const [n, , , ch] = c.x;
        const tag = `groupNormAct ${impl} ${JSON.stringify(c)}`;
        // atol 1e-4: with one channel per group the shift gradient is zero up to round-off.
        const tol = { rtol: 1e-4, atol: 1e-4, scaled: true };
        // Inputs with a large mean, as after a convolution, test the two-pass variance.
        if (c.shift) {
          const f = (x: tf.Tensor, shift: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) =>
            groupNormAct(x as tf.Tensor4D, shift, gamma, beta, c.groups, { swish: c.swish });
          await check(tag, [F(c.x, 2, 5), F([n, ch]), F([ch]), F([ch])], withGrads(f), tol);
        } else {
          const f = (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) =>
            groupNormAct(x as tf.Tensor4D, null, gamma, beta, c.groups, { swish: c.swish });
          await check(tag, [F(c.x, 2, 5), F([ch]), F([ch])], withGrads(f), tol);
        }
      }
    }
  } finally {
    setFusedGroupNormImpl('native');
  }
});

function smallNet() {
  const cfg = modelConfig({ channels: [8, 16, 16, 32], embedDim: 16 });
  const net = new ScoreNet(cfg, makeSde({ name: 've' }));
  return { net, flat: initParams(net.infos, 3) };
}

test('a small ScoreNet (fused GroupNorm blocks on torch, the tfjs decomposition on cpu): DSM loss and every parameter gradient match', async () => {
  const { net, flat } = smallNet();
  const n = 3;
  const x = rand(n * 784, 0, 1);
  const t = rand(n, 0.01, 1);
  const z = rand(n * 784);
  const [cpu, torch] = await both([], () => {
    const p = net.tensors(flat);
    const trainable = net.infos.filter((i) => i.trainable);
    const xs = tf.tensor4d(x, [n, 28, 28, 1]);
    const ts = tf.tensor1d(t);
    const zs = tf.tensor4d(z, [n, 28, 28, 1]);
    const f = (...ws: tf.Tensor[]) => {
      const pp = { ...p };
      trainable.forEach((info, k) => (pp[info.name] = ws[k]));
      return dsmLossPerSample((a, b) => net.apply(pp, a, b), net.sde, xs, ts, zs).sum() as tf.Scalar;
    };
    const { value, grads } = tf.valueAndGrads(f)(trainable.map((info) => p[info.name]));
    return [value, net.apply(p, xs, ts), ...grads];
  });
  // Loss and score to 1e-4, gradients to 1e-3 of their largest magnitude (the parity tolerances).
  assertClose(cpu.slice(0, 2), torch.slice(0, 2), 'loss and score', { rtol: 1e-4, atol: 1e-4, scaled: true });
  assertClose(cpu.slice(2), torch.slice(2), 'gradients', { rtol: 1e-3, atol: 1e-3, scaled: true });
});

test('PyTorch parity fixture passes on torch (score and loss 1e-4, gradients 1e-3)', async () => {
  await torchReady();
  await tf.setBackend('torch');
  const r = runParity(packagePath('test/fixtures/scorenet_parity.safetensors'), 'torch');
  assert.ok(r.score <= 1e-4, `score rel err ${r.score}`);
  assert.ok(r.loss <= 1e-4, `loss rel err ${r.loss}`);
  for (const [name, e] of Object.entries({ ...r.grads, ...r.zeroGrads })) assert.ok(e <= 1e-3, `${name}: ${e}`);
  assert.equal(r.pass, true);
});

// ------------------------------------------------------------------ leaks, errors, coverage

test('no leaks: tfjs tensors and libtorch tensors stay flat over many training steps', async () => {
  await torchReady();
  await tf.setBackend('torch');
  const { net, flat } = smallNet();
  const params = flat.slice();
  const trainable = net.infos.filter((i) => i.trainable);
  const n = 4;
  const x = rand(n * 784, 0, 1);
  const step = (k: number) => {
    const p = tf.tidy(() => net.tensors(params));
    const loss = tf.tidy(() => {
      const xs = tf.tensor4d(x, [n, 28, 28, 1]);
      const ts = tf.fill([n], 0.1 + 0.8 * ((k % 7) / 7)) as tf.Tensor1D;
      const zs = tf.randomNormal([n, 28, 28, 1], 0, 1, 'float32', k) as tf.Tensor4D;
      const f = (...ws: tf.Tensor[]) => {
        const pp = { ...p };
        trainable.forEach((info, j) => (pp[info.name] = ws[j]));
        return dsmLossPerSample((a, b) => net.apply(pp, a, b), net.sde, xs, ts, zs).mean() as tf.Scalar;
      };
      const { value, grads } = tf.valueAndGrads(f)(trainable.map((info) => p[info.name]));
      trainable.forEach((info, j) => {
        const g = grads[j].dataSync();
        for (let i = 0; i < info.size; i++) params[info.offset + i] -= 1e-4 * g[i];
      });
      return value.dataSync()[0];
    });
    tf.dispose(Object.values(p));
    return loss;
  };
  for (let k = 0; k < 3; k++) step(k);
  const tensors0 = tf.memory().numTensors;
  const live0 = torchLiveTensors();
  for (let k = 3; k < 40; k++) assert.ok(Number.isFinite(step(k)));
  assert.equal(tf.memory().numTensors, tensors0, 'tfjs tensors');
  assert.equal(torchLiveTensors(), live0, 'libtorch tensors');
});

test('an unimplemented kernel fails with one line naming it', async () => {
  await torchReady();
  await tf.setBackend('torch');
  const x = tf.ones([1, 4, 4, 1]) as tf.Tensor4D;
  assert.throws(
    () => tf.maxPool(x, 2, 2, 'valid'),
    (e: Error) => /MaxPool/.test(e.message) && /torch/.test(e.message) && !e.message.includes('\n'),
  );
  x.dispose();
});

test('a libtorch error surfaces as one line naming the kernel', async () => {
  await torchReady();
  await tf.setBackend('torch');
  const a = tf.ones([2, 3]);
  const b = tf.ones([4, 5]);
  // Straight to the kernel, past tfjs's own shape checks.
  assert.throws(
    () => tf.engine().runKernel('BatchMatMul', { a, b }, { transposeA: false, transposeB: false }),
    (e: Error) => e.message.startsWith('BatchMatMul: ') && !e.message.includes('\n'),
  );
  tf.dispose([a, b]);
});

test('an unavailable device is refused with one line, and the backend keeps working', async () => {
  await torchReady();
  if (!torchInfo().cuda) {
    await assert.rejects(registerTorchBackend({ device: 'cuda:0' }), (e: Error) => /cuda/i.test(e.message) && !e.message.includes('\n'));
  }
  await assert.rejects(registerTorchBackend({ device: 'tpu:0' }), (e: Error) => !e.message.includes('\n'));
  await assert.rejects(registerTorchBackend({ threads: 0 }), /threads/);
  await registerTorchBackend({ threads: 2 });
  assert.equal(tf.getBackend(), 'torch');
  assert.deepEqual(Array.from(tf.add(tf.tensor([1]), 1).dataSync()), [2]);
});

test('native/build.mjs: without libtorch, one line and exit 0; exit 1 when the addon is required', () => {
  const script = packagePath('native', 'build.mjs');
  const env = { ...process.env, LIBTORCH_DIR: '/nonexistent/libtorch', SCOREFLOW_REQUIRE_TORCH: '' };
  const soft = spawnSync(process.execPath, [script], { env, encoding: 'utf8' });
  assert.equal(soft.status, 0);
  const lines = soft.stderr.trim().split('\n');
  assert.equal(lines.length, 1, soft.stderr);
  assert.match(lines[0], /^scoreflow: .*libtorch.*skipping the torch backend \(wasm still works\)/);
  const strict = spawnSync(process.execPath, [script], { env: { ...env, SCOREFLOW_REQUIRE_TORCH: '1' }, encoding: 'utf8' });
  assert.equal(strict.status, 1);
});

/** Runs helpers/blas-idle.ts (a matMul every 50 ms for a second) in a child with `env`. */
function blasIdle(env: NodeJS.ProcessEnv): { wallMs: number; openblasThreads?: string; threads: { tid: string; cpuMs: number }[] } {
  const script = fileURLToPath(new URL('./helpers/blas-idle.js', import.meta.url));
  const r = spawnSync(process.execPath, [script], { env, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

test('no OpenBLAS thread spins between kernels: OPENBLAS_NUM_THREADS=1 unless the user set it', () => {
  const env = { ...process.env };
  delete env.OPENBLAS_NUM_THREADS; // this process's own loading set it; the child must set it itself
  const { wallMs, openblasThreads, threads } = blasIdle(env);
  assert.equal(openblasThreads, '1');
  // Without the setting, OpenBLAS's worker spun in sched_yield through every gap: 960 ms of CPU in
  // a 1950 ms loop with other processes on the machine's 2 cores, about all of it on an idle one.
  // The other threads (V8's) used about 100 ms each.
  const busiest = threads.reduce((a, b) => (b.cpuMs > a.cpuMs ? b : a), { tid: 'none', cpuMs: 0 });
  assert.ok(
    busiest.cpuMs < 0.3 * wallMs,
    `thread ${busiest.tid} used ${busiest.cpuMs} ms of CPU in a ${Math.round(wallMs)} ms loop that is mostly idle`,
  );
  assert.equal(blasIdle({ ...env, OPENBLAS_NUM_THREADS: '2' }).openblasThreads, '2', "the user's value is kept");
});

test('every registered torch kernel was exercised by this suite', async () => {
  await torchReady();
  const calls = torchKernelCalls();
  const missed = TORCH_KERNELS.filter((k) => !(calls[k] > 0));
  assert.deepEqual(missed, [], `kernels no test reached: ${missed.join(', ')}`);
});
