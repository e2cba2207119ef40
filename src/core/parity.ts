/**
 * Parity against a PyTorch-made fixture (format: reference/make_fixture.py): the same
 * weights and inputs must give the same score, DSM loss and parameter gradients.
 */
import * as tf from '@tensorflow/tfjs';
import { getFloat32, readSafetensors } from './io/safetensors.js';
import { dsmLossPerSample } from './loss.js';
import { structurallyZeroGrads } from './model/params.js';
import { ScoreNet, type ParamTensors } from './model/scorenet.js';
import { inferModelConfig } from './model/weights.js';
import { fromTorchLayout, numParams } from './model/params.js';
import { makeSde } from './sde.js';

export interface ParityReport {
  fixture: string;
  backend: string;
  score: number;
  loss: number;
  /** Per trainable parameter: max |ours - torch| / max |torch|. */
  grads: Record<string, number>;
  /** Gradients that are exactly zero in exact arithmetic (see structurallyZeroGrads): max |ours - torch| / max over all |torch grads|. */
  zeroGrads: Record<string, number>;
  tolerance: { score: number; loss: number; grads: number };
  pass: boolean;
}

export const PARITY_TOLERANCE = { score: 1e-4, loss: 1e-4, grads: 1e-3 };

/** max |ours - ref| over max |ref| (or over `scale`). */
export function maxRelDiff(ours: ArrayLike<number>, ref: ArrayLike<number>, scale?: number): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < ref.length; i++) {
    d = Math.max(d, Math.abs(ours[i] - ref[i]));
    m = Math.max(m, Math.abs(ref[i]));
  }
  return d / (scale ?? (m || 1));
}

export function runParity(path: string, backend: string): ParityReport {
  const file = readSafetensors(path);
  const model = inferModelConfig(file);
  const net = new ScoreNet(
    model,
    makeSde({ name: 've', sigmaMin: Number(file.metadata.sigma_min ?? 0.01), sigmaMax: Number(file.metadata.sigma_max ?? 22) }),
  );
  const flat = new Float32Array(numParams(net.infos));
  for (const info of net.infos) flat.set(fromTorchLayout(info, getFloat32(file, info.name, info.torchShape)), info.offset);
  const x = file.tensors.get('input.x');
  if (!x || x.shape.length !== 4 || x.shape[1] !== 1) throw new Error(`${path}: input.x must be [B,1,H,W]`);
  const [b, , h, w] = x.shape;
  // [B,1,H,W] and [B,H,W,1] share one memory layout.
  const xs = getFloat32(file, 'input.x', [b, 1, h, w]);
  const ts = getFloat32(file, 'input.t', [b]);
  const zs = getFloat32(file, 'input.z', [b, 1, h, w]);
  const refScore = getFloat32(file, 'output.score', [b, 1, h, w]);
  const refLoss = getFloat32(file, 'output.loss', [1])[0];

  const trainable = net.infos.filter((i) => i.trainable);
  const zero = new Set(structurallyZeroGrads(model));
  const out = tf.tidy(() => {
    const p: ParamTensors = net.tensors(flat);
    const xt = tf.tensor4d(xs, [b, h, w, 1]);
    const tt = tf.tensor1d(ts);
    const zt = tf.tensor4d(zs, [b, h, w, 1]);
    const score = net.apply(p, xt, tt).dataSync();
    const f = (...ws: tf.Tensor[]) => {
      const pp = { ...p };
      trainable.forEach((info, k) => (pp[info.name] = ws[k]));
      return dsmLossPerSample((a, c) => net.apply(pp, a, c), net.sde, xt, tt, zt).mean() as tf.Scalar;
    };
    const { value, grads } = tf.valueAndGrads(f)(trainable.map((i) => p[i.name]));
    return { score, loss: value.dataSync()[0], grads: grads.map((g) => g.dataSync() as Float32Array) };
  });

  const refGrads = trainable.map((info) => fromTorchLayout(info, getFloat32(file, 'grad.' + info.name, info.torchShape)));
  const globalScale = Math.max(...refGrads.map((g) => g.reduce((m, v) => Math.max(m, Math.abs(v)), 0)));
  const report: ParityReport = {
    fixture: path,
    backend,
    score: maxRelDiff(out.score, refScore),
    loss: Math.abs(out.loss - refLoss) / Math.abs(refLoss),
    grads: {},
    zeroGrads: {},
    tolerance: PARITY_TOLERANCE,
    pass: false,
  };
  trainable.forEach((info, k) => {
    if (zero.has(info.name)) report.zeroGrads[info.name] = maxRelDiff(out.grads[k], refGrads[k], globalScale);
    else report.grads[info.name] = maxRelDiff(out.grads[k], refGrads[k]);
  });
  const worstGrad = Math.max(...Object.values(report.grads), ...Object.values(report.zeroGrads));
  report.pass = report.score <= PARITY_TOLERANCE.score && report.loss <= PARITY_TOLERANCE.loss && worstGrad <= PARITY_TOLERANCE.grads;
  return report;
}
