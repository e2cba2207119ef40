#!/usr/bin/env node
// Quick speed check of the torch backend on the reference ScoreNet (run `npx tsc -p .` first):
//   node native/bench.mjs [--backends torch,wasm,cpu] [--batch 32] [--threads N] [--reps 5] [--fused]
//   node native/bench.mjs --leak 1000 --batch 8     tensor counts and RSS over 1000 training steps
// Prints one JSON line per backend: training images/s at --batch, forward and forward+input-gradient
// images/s at batch 64 (the same quantities as ../shared/reference/torch_baseline.py).
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';

const { values: a } = parseArgs({
  options: {
    backends: { type: 'string', default: 'torch' },
    batch: { type: 'string', default: '32' },
    threads: { type: 'string' },
    reps: { type: 'string', default: '5' },
    profile: { type: 'boolean', default: false },
    fused: { type: 'boolean', default: false },
    leak: { type: 'string' },
  },
});
const dist = new URL('../dist/src/core/', import.meta.url);
const { ScoreNet } = await import(new URL('model/scorenet.js', dist).href);
const { modelConfig } = await import(new URL('model/config.js', dist).href);
const { initParams } = await import(new URL('model/params.js', dist).href);
const { makeSde } = await import(new URL('sde.js', dist).href);
const { dsmLossPerSample } = await import(new URL('loss.js', dist).href);

const { groupNormAct } = await import(new URL('backend/torch.js', dist).href);

/**
 * ScoreNet.apply with each block's add + GroupNorm + swish as one groupNormAct call
 * (--fused): the same network, for measuring what the fused kernel buys.
 */
function applyFused(net, p, x, t) {
  const embed = net.embed(p, t);
  const conv = (h, name, stride) => tf.conv2d(h, p[`${name}.weight`], stride, 'valid');
  const block = (h, dense, norm) => {
    const d = tf.matMul(embed, p[`${dense}.dense.weight`]).add(p[`${dense}.dense.bias`]);
    return groupNormAct(h, d, p[`${norm}.weight`], p[`${norm}.bias`], net.groups[norm].groups);
  };
  const h1 = block(conv(x, 'conv1', 1), 'dense1', 'gnorm1');
  const h2 = block(conv(h1, 'conv2', 2), 'dense2', 'gnorm2');
  const h3 = block(conv(h2, 'conv3', 2), 'dense3', 'gnorm3');
  const h4 = block(conv(h3, 'conv4', 2), 'dense4', 'gnorm4');
  let h = block(net.tconv(h4, p['tconv4.weight'], 2, 0), 'dense5', 'tgnorm4');
  h = block(net.tconv(tf.concat([h, h3], 3), p['tconv3.weight'], 2, 1), 'dense6', 'tgnorm3');
  h = block(net.tconv(tf.concat([h, h2], 3), p['tconv2.weight'], 2, 1), 'dense7', 'tgnorm2');
  h = net.tconv(tf.concat([h, h1], 3), p['tconv1.weight'], 1, 0).add(p['tconv1.bias']);
  return h.div(net.sde.stdTensor(t).reshape([-1, 1, 1, 1]));
}

const B = Number(a.batch);
const S = 64;
const reps = Number(a.reps);
const threads = a.threads ? Number(a.threads) : undefined;

function rand(n, seed) {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  return out;
}

function timed(fn) {
  for (let i = 0; i < 2; i++) fn();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) fn();
  return (performance.now() - t0) / 1000 / reps;
}

async function use(name) {
  if (name === 'torch') {
    const { registerTorchBackend } = await import(new URL('backend/torch.js', dist).href);
    await registerTorchBackend({ threads });
  } else {
    if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
    if (!(await tf.setBackend(name))) throw new Error(`no backend ${name}`);
  }
}

for (const name of a.backends.split(',')) {
  await use(name);
  const cfg = modelConfig();
  const net = new ScoreNet(cfg, makeSde({ name: 've' }));
  if (a.fused) net.apply = (p, x, t) => applyFused(net, p, x, t);
  const p = net.tensors(initParams(net.infos, 0));
  const trainable = net.infos.filter((i) => i.trainable);
  const x = rand(B * 784, 1);
  const xs64 = rand(S * 784, 2).map((v) => 2 * v - 1);

  const trainStep = () =>
    tf.tidy(() => {
      const xs = tf.tensor4d(x, [B, 28, 28, 1]);
      const ts = tf.tensor1d(rand(B, 3).map((v) => 1e-3 + (1 - 1e-3) * v));
      const zs = tf.tensor4d(rand(B * 784, 4), [B, 28, 28, 1]);
      const f = (...ws) => {
        const pp = { ...p };
        trainable.forEach((info, k) => (pp[info.name] = ws[k]));
        return dsmLossPerSample((u, v) => net.apply(pp, u, v), net.sde, xs, ts, zs).mean();
      };
      const { value, grads } = tf.valueAndGrads(f)(trainable.map((info) => p[info.name]));
      for (const g of grads) g.dataSync();
      return value.dataSync()[0];
    });
  const fwd = () =>
    tf.tidy(() => {
      net.apply(p, tf.tensor4d(xs64, [S, 28, 28, 1]), tf.fill([S], 0.5)).dataSync();
    });
  const divEval = () =>
    tf.tidy(() => {
      const eps = tf.tensor4d(rand(S * 784, 5), [S, 28, 28, 1]);
      const g = tf.grad((xg) => tf.sum(tf.mul(net.apply(p, xg, tf.fill([S], 0.5)), eps)));
      g(tf.tensor4d(xs64, [S, 28, 28, 1])).dataSync();
    });

  if (a.leak) {
    const steps = Number(a.leak);
    const { torchLiveTensors } = await import(new URL('backend/torch.js', dist).href);
    const rows = [];
    for (let k = 0; k < steps; k++) {
      trainStep();
      if (k % Math.max(1, Math.floor(steps / 10)) === 0 || k === steps - 1) {
        rows.push({ step: k, numTensors: tf.memory().numTensors, torchLive: name === 'torch' ? torchLiveTensors() : null, rssMB: Math.round(process.memoryUsage().rss / 2 ** 20) });
      }
    }
    console.log(JSON.stringify({ backend: name, leakCheck: rows }));
    continue;
  }
  if (a.profile && name === 'torch') {
    const { takeKernelTimes } = await import(new URL('backend/torch.js', dist).href);
    trainStep();
    takeKernelTimes();
    const t0 = performance.now();
    for (let r = 0; r < 3; r++) trainStep();
    const wall = (performance.now() - t0) / 3;
    const times = Object.entries(takeKernelTimes()).sort((u, v) => v[1].ms - u[1].ms);
    const total = times.reduce((u, [, v]) => u + v.ms, 0) / 3;
    console.error(`step ${wall.toFixed(1)} ms, in kernels ${total.toFixed(1)} ms`);
    for (const [k, v] of times) console.error(`  ${k.padEnd(22)} ${String(v.calls / 3).padStart(5)} calls ${(v.ms / 3).toFixed(2).padStart(8)} ms`);
  }
  if (false) {
    const prof = await tf.profile(() => trainStep());
    const byName = new Map();
    for (let r = 0; r < 3; r++) {
      byName.clear();
      const prof2 = await tf.profile(() => trainStep());
      for (const k of prof2.kernels) {
        const e = byName.get(k.name) ?? [0, 0];
        e[0]++;
        e[1] += await k.kernelTimeMs;
        byName.set(k.name, e);
      }
    }
    const total = [...byName.values()].reduce((u, v) => u + v[1], 0);
    console.error(`kernel ms total ${total.toFixed(1)}`);
    console.error(`${prof.kernels.length} kernel calls per training step:`, Object.fromEntries([...byName].sort((u, v) => v[1][1] - u[1][1]).map(([k, v]) => [k, `${v[0]} calls ${v[1].toFixed(2)} ms`])));
  }
  const out = {
    backend: name,
    fused: a.fused,
    threads: threads ?? null,
    batch: B,
    train_images_per_s: B / timed(trainStep),
    sample_forward_images_per_s: S / timed(fwd),
    likelihood_fe_images_per_s: S / timed(divEval),
    numTensors: tf.memory().numTensors,
  };
  console.log(JSON.stringify(out));
  tf.dispose(Object.values(p));
}
