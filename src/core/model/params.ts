/**
 * ScoreNet parameters: PyTorch state_dict names, shapes in both layouts, and initialisation.
 *
 * We keep every parameter in tfjs's channels-last layout (conv [kh,kw,in,out], conv-transpose
 * [kh,kw,out,in], linear [in,out]) and convert to PyTorch's (conv [out,in,kh,kw], conv-transpose
 * [in,out,kh,kw], linear [out,in]) only at the checkpoint boundary.
 */
import { Rng, Stream } from '../rng.js';
import type { ParamSpec } from '../train/api.js';
import { type ModelConfig, groupsFor } from './config.js';

export type LayerKind = 'conv' | 'tconv' | 'linear' | 'vector';

export interface ParamInfo extends ParamSpec {
  torchShape: number[];
  kind: LayerKind;
  trainable: boolean;
  /** PyTorch's default init bound U(-b, b), or the constant for GroupNorm; null for the Fourier weights. */
  init: { uniform: number } | { constant: number } | { normal: number };
}

/** Every parameter, in the reference's state_dict order. */
export function paramInfos(cfg: ModelConfig): ParamInfo[] {
  const [c0, c1, c2, c3] = cfg.channels;
  const e = cfg.embedDim;
  const out: ParamInfo[] = [];
  let offset = 0;
  const add = (name: string, kind: LayerKind, torchShape: number[], init: ParamInfo['init'], trainable = true) => {
    const shape = toOursShape(kind, torchShape);
    const size = torchShape.reduce((a, b) => a * b, 1);
    out.push({ name, kind, torchShape, shape, offset, size, init, trainable });
    offset += size;
  };
  // PyTorch's default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)); fan_in is dim 1 x receptive field,
  // which for ConvTranspose2d ([in,out,kh,kw]) is the *output* channels.
  const conv = (name: string, cin: number, cout: number) =>
    add(`${name}.weight`, 'conv', [cout, cin, 3, 3], { uniform: 1 / Math.sqrt(cin * 9) });
  const tconv = (name: string, cin: number, cout: number, bias = false) => {
    add(`${name}.weight`, 'tconv', [cin, cout, 3, 3], { uniform: 1 / Math.sqrt(cout * 9) });
    if (bias) add(`${name}.bias`, 'vector', [cout], { uniform: 1 / Math.sqrt(cout * 9) });
  };
  const dense = (name: string, cout: number) => {
    add(`${name}.dense.weight`, 'linear', [cout, e], { uniform: 1 / Math.sqrt(e) });
    add(`${name}.dense.bias`, 'vector', [cout], { uniform: 1 / Math.sqrt(e) });
  };
  const gnorm = (name: string, c: number) => {
    add(`${name}.weight`, 'vector', [c], { constant: 1 });
    add(`${name}.bias`, 'vector', [c], { constant: 0 });
  };
  add('embed.W', 'vector', [e / 2], { normal: cfg.fourierScale }, false);
  conv('conv1', 1, c0);
  dense('dense1', c0);
  gnorm('gnorm1', c0);
  conv('conv2', c0, c1);
  dense('dense2', c1);
  gnorm('gnorm2', c1);
  conv('conv3', c1, c2);
  dense('dense3', c2);
  gnorm('gnorm3', c2);
  conv('conv4', c2, c3);
  dense('dense4', c3);
  gnorm('gnorm4', c3);
  tconv('tconv4', c3, c2);
  dense('dense5', c2);
  gnorm('tgnorm4', c2);
  tconv('tconv3', c2 + c2, c1);
  dense('dense6', c1);
  gnorm('tgnorm3', c1);
  tconv('tconv2', c1 + c1, c0);
  dense('dense7', c0);
  gnorm('tgnorm2', c0);
  tconv('tconv1', c0 + c0, 1, true);
  groupsFor(cfg);
  return out;
}

export function numParams(infos: ParamInfo[]): number {
  const last = infos[infos.length - 1];
  return last.offset + last.size;
}

/** Permutation taking our layout to PyTorch's (out[i] = ours axis perm[i]), and its inverse. */
const TO_TORCH: Record<LayerKind, number[]> = {
  conv: [3, 2, 0, 1], // [kh,kw,in,out] -> [out,in,kh,kw]
  tconv: [3, 2, 0, 1], // [kh,kw,out,in] -> [in,out,kh,kw]
  linear: [1, 0], // [in,out] -> [out,in]
  vector: [0],
};

function toOursShape(kind: LayerKind, torchShape: number[]): number[] {
  const p = TO_TORCH[kind];
  const ours = new Array<number>(p.length);
  p.forEach((src, i) => (ours[src] = torchShape[i]));
  return ours;
}

/** Generic N-d transpose of a dense row-major array: out has axes `perm` of the input. */
export function permute(data: Float32Array, shape: number[], perm: number[]): Float32Array {
  const rank = shape.length;
  const outShape = perm.map((p) => shape[p]);
  const inStrides = strides(shape);
  const out = new Float32Array(data.length);
  const idx = new Array<number>(rank).fill(0);
  for (let o = 0; o < out.length; o++) {
    let src = 0;
    for (let d = 0; d < rank; d++) src += idx[d] * inStrides[perm[d]];
    out[o] = data[src];
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d] < outShape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

function strides(shape: number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

export function toTorchLayout(info: ParamInfo, ours: Float32Array): Float32Array {
  return info.kind === 'vector' ? ours.slice() : permute(ours, info.shape, TO_TORCH[info.kind]);
}

export function fromTorchLayout(info: ParamInfo, torch: Float32Array): Float32Array {
  if (info.kind === 'vector') return torch.slice();
  const p = TO_TORCH[info.kind];
  const inv = new Array<number>(p.length);
  p.forEach((src, i) => (inv[src] = i));
  return permute(torch, info.torchShape, inv);
}

/** A fresh flat parameter vector with PyTorch's default initialisation, from (seed). */
export function initParams(infos: ParamInfo[], seed: number): Float32Array {
  const flat = new Float32Array(numParams(infos));
  infos.forEach((info, i) => {
    const rng = new Rng(seed, Stream.Init, i);
    const view = flat.subarray(info.offset, info.offset + info.size);
    if ('uniform' in info.init) {
      const b = info.init.uniform;
      for (let j = 0; j < view.length; j++) view[j] = (2 * rng.uniform() - 1) * b;
    } else if ('constant' in info.init) {
      view.fill(info.init.constant);
    } else {
      rng.fillNormal(view);
      for (let j = 0; j < view.length; j++) view[j] *= info.init.normal;
    }
  });
  return flat;
}

/**
 * Parameters whose loss gradient is identically zero: the Dense time bias added right before a
 * GroupNorm with one channel per group. Normalising each channel over its own H x W removes
 * any per-channel constant, so the bias cannot change the output. In float32 their gradients
 * are round-off (about 1e-7 of the gradient scale), so they are compared on that scale.
 */
export function structurallyZeroGrads(cfg: ModelConfig): string[] {
  const g = groupsFor(cfg);
  const pairs: Array<[string, string]> = [
    ['dense1', 'gnorm1'],
    ['dense2', 'gnorm2'],
    ['dense3', 'gnorm3'],
    ['dense4', 'gnorm4'],
    ['dense5', 'tgnorm4'],
    ['dense6', 'tgnorm3'],
    ['dense7', 'tgnorm2'],
  ];
  return pairs
    .filter(([, norm]) => g[norm].groups === g[norm].channels)
    .flatMap(([dense]) => [`${dense}.dense.weight`, `${dense}.dense.bias`]);
}
