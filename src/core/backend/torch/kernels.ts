/**
 * The torch backend's kernel table: for each tfjs kernel, how its inputs and attributes are
 * written into the addon's argument buffer. Which slot holds what is described once, beside each
 * op of the addon's op table (native/src/kernels.cc, group_norm.cc, conv.cc); the functions here
 * fill those slots.
 *
 * Every kernel here runs in libtorch; a kernel that is not listed is not registered for 'torch',
 * so tfjs fails with "Kernel 'X' not registered for backend 'torch'" rather than falling back.
 */
import * as tf from '@tensorflow/tfjs';
import { GROUP_NORM_ACT, GROUP_NORM_ACT_GRAD } from '../fused.js';
import { DT, KEEP, dtypeCode, type Dtype, type TorchBackend } from './backend.js';

export type Attrs = Record<string, unknown>;
export type Inputs = Record<string, tf.TensorInfo | undefined> | tf.TensorInfo[];

// ------------------------------------------------------------------------ fused GroupNorm op

let fusedImpl: 'native' | 'aten' = 'native';
/** Which implementation the fused GroupNorm kernels use on CPU: hand-vectorised loops or ATen ops. */
export function setFusedGroupNormImpl(impl: 'native' | 'aten'): void {
  fusedImpl = impl;
}

// ------------------------------------------------------------------------ kernels

export type KernelImpl = (b: TorchBackend, op: number, inputs: Inputs, attrs: Attrs) => tf.TensorInfo | tf.TensorInfo[];

function input(inputs: Inputs, name: string): tf.TensorInfo {
  const t = (inputs as Record<string, tf.TensorInfo | undefined>)[name];
  if (t === undefined) throw new Error(`torch backend: missing input '${name}'`);
  return t;
}

function optional(inputs: Inputs, name: string): tf.TensorInfo | undefined {
  return (inputs as Record<string, tf.TensorInfo | undefined>)[name] ?? undefined;
}

/** Most tensors one kernel call can take (they travel as ids in the argument buffer). */
const MAX_LIST = 1000;

function list(inputs: Inputs): tf.TensorInfo[] {
  const all = Array.isArray(inputs) ? inputs : (Object.values(inputs).filter((t) => t !== undefined) as tf.TensorInfo[]);
  if (all.length > MAX_LIST) throw new Error(`torch backend: at most ${MAX_LIST} tensors per concat/stack/addN call, got ${all.length}`);
  return all;
}

/** Unary op; output dtype as the cpu backend gives it: `dtype` when fixed, else x's. */
const unary =
  (dtype?: Dtype): KernelImpl =>
  (b, op, inputs) => {
    const x = input(inputs, 'x');
    b.I[0] = b.id(x);
    b.I[1] = DT[dtype ?? x.dtype] ?? KEEP;
    return b.run1(op);
  };

/** Unary op with float attributes written to F in the order named. */
const unaryF =
  (...names: string[]): KernelImpl =>
  (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    names.forEach((n, j) => (b.F[j] = Number(attrs[n])));
    b.I[0] = b.id(x);
    b.I[1] = DT[x.dtype] ?? KEEP;
    return b.run1(op);
  };

/** Broadcasting binary op; output dtype: `dtype` when fixed, else a's (the cpu backend's rule). */
const binary =
  (dtype?: Dtype, names: [string, string] = ['a', 'b']): KernelImpl =>
  (b, op, inputs) => {
    const x = input(inputs, names[0]);
    const y = input(inputs, names[1]);
    b.I[0] = b.id(x);
    b.I[1] = b.id(y);
    b.I[2] = DT[dtype ?? x.dtype] ?? KEEP;
    return b.run1(op);
  };

/** Reduction over `axis` with keepDims; output dtype by `outDtype(x.dtype)`. */
const reduction =
  (outDtype: (x: string) => string): KernelImpl =>
  (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    const axis = ('reductionIndices' in attrs ? attrs.reductionIndices : attrs.axis) as number | number[];
    const axes = tf.util.parseAxisParam(axis, x.shape);
    const I = b.I;
    I[0] = b.id(x);
    I[1] = DT[outDtype(x.dtype)] ?? KEEP;
    I[2] = attrs.keepDims ? 1 : 0;
    I[3] = axes.length;
    b.ints(4, axes);
    return b.run1(op);
  };

/** Cumsum/Cumprod along one axis, inclusive or exclusive, forwards or reversed; dtype as the input's. */
function cumulative(b: TorchBackend, op: number, inputs: Inputs, attrs: Attrs): tf.TensorInfo {
  const x = input(inputs, 'x');
  const I = b.I;
  I[0] = b.id(x);
  I[1] = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0];
  I[2] = attrs.exclusive ? 1 : 0;
  I[3] = attrs.reverse ? 1 : 0;
  I[4] = DT[x.dtype] ?? KEEP;
  return b.run1(op);
}

const ACTIVATIONS: Record<string, number> = { linear: 0, relu: 1, relu6: 2, elu: 3, sigmoid: 4, leakyrelu: 5, prelu: 6 };

function activationCode(name: unknown): number {
  const code = ACTIVATIONS[(name as string | undefined) ?? 'linear'];
  if (code === undefined) throw new Error(`torch backend: fused activation '${String(name)}' is not supported`);
  return code;
}

function nhwcOnly(attrs: Attrs, kernel: string): void {
  const f = attrs.dataFormat as string | undefined;
  if (f !== undefined && f !== 'NHWC' && f !== 'channelsLast') {
    throw new Error(`torch backend: ${kernel} supports dataFormat NHWC only, got ${f}`);
  }
}

type Shape4 = [number, number, number, number];

/**
 * What every convolution kernel shares: tfjs's Conv2DInfo from the input and filter shapes and
 * the attributes (the gradient kernels have no dilations attribute: tfjs takes their dilation to
 * be 1), written with the two tensor ids into the slots the addon's convolution ops read.
 */
function convSetup(
  b: TorchBackend,
  kernel: string,
  attrs: Attrs,
  ids: [tf.TensorInfo, tf.TensorInfo],
  xShape: number[],
  filterShape: number[],
): void {
  nhwcOnly(attrs, kernel);
  const info = tf.backend_util.computeConv2DInfo(
    xShape as Shape4,
    filterShape as Shape4,
    attrs.strides as number | [number, number],
    (attrs.dilations as number | [number, number] | undefined) ?? 1,
    attrs.pad as 'valid' | 'same' | number | tf.backend_util.ExplicitPadding,
    attrs.dimRoundingMode as 'floor' | 'round' | 'ceil' | undefined,
  );
  const p = info.padInfo;
  b.ints(0, [b.id(ids[0]), b.id(ids[1]), info.strideHeight, info.strideWidth, p.top, p.bottom, p.left, p.right]);
  b.ints(8, [info.dilationHeight, info.dilationWidth]);
}

const conv2D: KernelImpl = (b, op, inputs, attrs) => {
  const x = input(inputs, 'x');
  const filter = input(inputs, 'filter');
  convSetup(b, 'Conv2D', attrs, [x, filter], x.shape, filter.shape);
  return b.run1(op);
};

const fusedConv2D: KernelImpl = (b, op, inputs, attrs) => {
  const x = input(inputs, 'x');
  const filter = input(inputs, 'filter');
  const bias = optional(inputs, 'bias');
  const prelu = optional(inputs, 'preluActivationWeights');
  convSetup(b, 'FusedConv2D', attrs, [x, filter], x.shape, filter.shape);
  b.ints(10, [bias ? b.id(bias) : -1, activationCode(attrs.activation), prelu ? b.id(prelu) : -1]);
  b.F[0] = Number(attrs.leakyreluAlpha ?? 0.2);
  return b.run1(op);
};

const conv2DBackpropInput: KernelImpl = (b, op, inputs, attrs) => {
  const dy = input(inputs, 'dy');
  const filter = input(inputs, 'filter');
  const xShape = attrs.inputShape as Shape4;
  convSetup(b, 'Conv2DBackpropInput', attrs, [dy, filter], xShape, filter.shape);
  b.ints(10, xShape);
  return b.run1(op);
};

const conv2DBackpropFilter: KernelImpl = (b, op, inputs, attrs) => {
  const x = input(inputs, 'x');
  const dy = input(inputs, 'dy');
  const filterShape = attrs.filterShape as Shape4;
  convSetup(b, 'Conv2DBackpropFilter', attrs, [x, dy], x.shape, filterShape);
  b.ints(10, filterShape);
  return b.run1(op);
};

/** Runs an op that takes x and one list of ints (a shape, a permutation, axes, repetitions). */
function withList(b: TorchBackend, op: number, x: tf.TensorInfo, values: readonly number[]): tf.TensorInfo {
  b.I[0] = b.id(x);
  b.I[1] = values.length;
  b.ints(2, values);
  return b.run1(op);
}

function fillZeros(b: TorchBackend, shape: number[], dtype: string): tf.TensorInfo {
  const I = b.I;
  I[0] = dtypeCode(dtype, 'Fill');
  I[1] = shape.length;
  b.ints(2, shape);
  b.F[0] = 0;
  return b.run1(b.op('Fill'));
}

/** Same buffer, another tfjs tensor: shares the DataId (as the cpu backend does), no native call. */
const identity = (b: TorchBackend, x: tf.TensorInfo): tf.TensorInfo => {
  b.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
};

const FLOAT_ONLY: Dtype = 'float32';

/** kernel name -> implementation; the addon op of the same name is what runs. */
export const KERNELS: Record<string, KernelImpl> = {
  // unary
  Neg: unary(),
  Square: unary(),
  Sqrt: unary(),
  Rsqrt: unary(),
  Exp: unary(FLOAT_ONLY),
  Log: unary(),
  Sin: unary(),
  Cos: unary(),
  Tan: unary(),
  Asin: unary(),
  Acos: unary(),
  Atan: unary(),
  Sinh: unary(),
  Cosh: unary(),
  Asinh: unary(),
  Acosh: unary(),
  Atanh: unary(),
  Sigmoid: unary(),
  Tanh: unary(),
  Relu: unary(),
  Relu6: unary(),
  Abs: unary(),
  Sign: unary(),
  Reciprocal: unary(),
  Expm1: unary(),
  Log1p: unary(),
  Softplus: unary(),
  Floor: unary(),
  Ceil: unary(),
  Round: unary(),
  Erf: unary(),
  Elu: unary(),
  Selu: unary(),
  IsNan: unary('bool'),
  IsInf: unary('bool'),
  IsFinite: unary('bool'),
  LogicalNot: unary('bool'),
  ZerosLike: unary(),
  OnesLike: unary(),
  Step: unaryF('alpha'),
  LeakyRelu: unaryF('alpha'),
  ClipByValue: unaryF('clipValueMin', 'clipValueMax'),
  Cast: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    const dtype = attrs.dtype as string;
    if (dtype === x.dtype) return identity(b, x);
    b.I[0] = b.id(x);
    b.I[1] = dtypeCode(dtype, 'Cast');
    return b.run1(op);
  },
  Identity: (b, _op, inputs) => identity(b, input(inputs, 'x')),

  // binary
  Add: binary(),
  Sub: binary(),
  Multiply: binary(),
  RealDiv: binary(),
  FloorDiv: binary('int32'),
  Mod: binary(),
  Maximum: binary(),
  Minimum: binary(),
  Pow: binary(),
  SquaredDifference: binary(),
  Atan2: binary(),
  Greater: binary('bool'),
  GreaterEqual: binary('bool'),
  Less: binary('bool'),
  LessEqual: binary('bool'),
  Equal: binary('bool'),
  NotEqual: binary('bool'),
  LogicalAnd: binary('bool'),
  LogicalOr: binary('bool'),
  Prelu: binary(undefined, ['x', 'alpha']),
  EluGrad: binary(undefined, ['dy', 'y']),
  Cumsum: (b, op, inputs, attrs) => cumulative(b, op, inputs, attrs),
  Cumprod: (b, op, inputs, attrs) => cumulative(b, op, inputs, attrs),
  LinSpace: (b, op, _inputs, attrs) => {
    b.I[0] = attrs.num as number;
    b.F[0] = attrs.start as number;
    b.F[1] = attrs.stop as number;
    return b.run1(op);
  },

  // reductions
  Sum: reduction((d) => (d === 'float32' ? d : 'int32')),
  Prod: reduction((d) => (d === 'float32' ? d : 'int32')),
  Mean: reduction(() => 'float32'),
  Max: reduction((d) => d),
  Min: reduction((d) => d),
  All: reduction(() => 'bool'),
  Any: reduction(() => 'bool'),
  ArgMax: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    b.I[0] = b.id(x);
    b.I[1] = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0];
    return b.run1(op);
  },
  ArgMin: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    b.I[0] = b.id(x);
    b.I[1] = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0];
    return b.run1(op);
  },
  Softmax: (b, op, inputs, attrs) => {
    const x = input(inputs, 'logits');
    b.I[0] = b.id(x);
    b.I[1] = tf.util.parseAxisParam(attrs.dim as number, x.shape)[0];
    return b.run1(op);
  },

  // shape and layout
  Reshape: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    const shape = tf.util.inferFromImplicitShape(attrs.shape as number[], tf.util.sizeFromShape(x.shape));
    return withList(b, op, x, shape);
  },
  ExpandDims: (b, op, inputs, attrs) => {
    const x = input(inputs, 'input');
    const rank = x.shape.length;
    let dim = attrs.dim as number;
    if (dim < 0) {
      if (dim < -(rank + 1)) throw new Error(`torch backend: ExpandDims axis ${dim} is out of range for rank ${rank}`);
      dim = rank + 1 + dim;
    }
    const shape = x.shape.slice();
    shape.splice(dim, 0, 1);
    return withList(b, op, x, shape);
  },
  Transpose: (b, op, inputs, attrs) => withList(b, op, input(inputs, 'x'), attrs.perm as number[]),
  Reverse: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    return withList(b, op, x, tf.util.parseAxisParam(attrs.dims as number | number[], x.shape));
  },
  Tile: (b, op, inputs, attrs) => withList(b, op, input(inputs, 'x'), attrs.reps as number[]),
  Slice: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    const [begin, size] = tf.slice_util.parseSliceParams(x, attrs.begin as number[], attrs.size as number[]);
    tf.slice_util.assertParamsValid(x, begin, size);
    b.I[0] = b.id(x);
    b.I[1] = x.shape.length;
    b.ints(2 + x.shape.length, size);
    b.ints(2, begin);
    return b.run1(op);
  },
  StridedSlice: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    const info = tf.slice_util.sliceInfo(
      x.shape,
      attrs.begin as number[],
      attrs.end as number[],
      attrs.strides as number[],
      attrs.beginMask as number,
      attrs.endMask as number,
      attrs.ellipsisMask as number,
      attrs.newAxisMask as number,
      attrs.shrinkAxisMask as number,
    );
    const I = b.I;
    const nd = x.shape.length;
    const counts = tf.slice_util.computeOutShape(info.begin, info.end, info.strides);
    I[0] = b.id(x);
    I[1] = nd;
    for (let d = 0; d < nd; d++) {
      I[2 + 3 * d] = info.begin[d];
      I[3 + 3 * d] = info.strides[d];
      I[4 + 3 * d] = counts[d];
    }
    const k = 2 + 3 * nd;
    I[k] = info.finalShape.length;
    b.ints(k + 1, info.finalShape);
    return b.run1(op);
  },
  Concat: (b, op, inputs, attrs) => {
    const all = list(inputs);
    const axis = tf.util.parseAxisParam(attrs.axis as number, all[0].shape)[0];
    const shape = tf.backend_util.computeOutShape(
      all.map((t) => t.shape),
      axis,
    );
    const nonEmpty = all.filter((t) => tf.util.sizeFromShape(t.shape) > 0);
    if (nonEmpty.length === 0) return fillZeros(b, shape, all[0].dtype);
    if (nonEmpty.length === 1) return identity(b, nonEmpty[0]);
    b.I[0] = axis;
    b.I[1] = nonEmpty.length;
    nonEmpty.forEach((t, j) => (b.I[2 + j] = b.id(t)));
    return b.run1(op);
  },
  Pack: (b, op, inputs, attrs) => {
    const all = list(inputs);
    b.I[0] = tf.util.parseAxisParam(attrs.axis as number, [...all[0].shape, 1])[0];
    b.I[1] = all.length;
    all.forEach((t, j) => (b.I[2 + j] = b.id(t)));
    return b.run1(op);
  },
  Unpack: (b, op, inputs, attrs) => {
    const x = input(inputs, 'value');
    b.I[0] = b.id(x);
    b.I[1] = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0];
    return b.runAll(op);
  },
  SplitV: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    const axis = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0];
    const sizes = tf.backend_util.prepareSplitSize(x, attrs.numOrSizeSplits as number | number[], axis);
    b.I[0] = b.id(x);
    b.I[1] = axis;
    b.I[2] = sizes.length;
    b.ints(3, sizes);
    return b.runAll(op);
  },
  PadV2: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    const pads = attrs.paddings as [number, number][];
    b.I[0] = b.id(x);
    b.I[1] = pads.length;
    pads.forEach(([lo, hi], d) => {
      b.I[2 + 2 * d] = lo;
      b.I[3 + 2 * d] = hi;
    });
    b.F[0] = Number(attrs.constantValue ?? 0);
    return b.run1(op);
  },
  Fill: (b, op, _inputs, attrs) => {
    const shape = attrs.shape as number[];
    const value = attrs.value as number;
    const dtype = (attrs.dtype as string | undefined) ?? tf.util.inferDtype(value);
    b.I[0] = dtypeCode(dtype, 'Fill');
    b.I[1] = shape.length;
    b.ints(2, shape);
    b.F[0] = Number(value);
    return b.run1(op);
  },
  Range: (b, op, _inputs, attrs) => {
    const start = attrs.start as number;
    const stop = attrs.stop as number;
    const step = attrs.step as number;
    const dtype = attrs.dtype as string;
    const empty = start === stop || (start < stop && step < 0) || (stop < start && step > 1);
    b.I[0] = dtypeCode(dtype, 'Range');
    b.I[1] = empty ? 0 : Math.abs(Math.ceil((stop - start) / step));
    b.F[0] = start;
    b.F[1] = step;
    return b.run1(op);
  },
  Select: (b, op, inputs) => {
    b.I[0] = b.id(input(inputs, 'condition'));
    b.I[1] = b.id(input(inputs, 't'));
    b.I[2] = b.id(input(inputs, 'e'));
    return b.run1(op);
  },
  GatherV2: (b, op, inputs, attrs) => {
    const x = input(inputs, 'x');
    if (((attrs.batchDims as number | undefined) ?? 0) !== 0) throw new Error('torch backend: GatherV2 supports batchDims 0 only');
    b.I[0] = b.id(x);
    b.I[1] = b.id(input(inputs, 'indices'));
    b.I[2] = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0];
    return b.run1(op);
  },
  OneHot: (b, op, inputs, attrs) => {
    b.I[0] = b.id(input(inputs, 'indices'));
    b.I[1] = attrs.depth as number;
    b.I[2] = dtypeCode((attrs.dtype as string | undefined) ?? 'int32', 'OneHot');
    b.F[0] = Number(attrs.onValue ?? 1);
    b.F[1] = Number(attrs.offValue ?? 0);
    return b.run1(op);
  },
  AddN: (b, op, inputs) => {
    const all = list(inputs);
    b.I[0] = all.length;
    all.forEach((t, j) => (b.I[1 + j] = b.id(t)));
    return b.run1(op);
  },

  // fused GroupNorm (+ shift, + swish); see groupNormAct
  [GROUP_NORM_ACT]: (b, op, inputs, attrs) => {
    const I = b.I;
    I[0] = b.id(input(inputs, 'x'));
    I[1] = b.id(input(inputs, 'shift'));
    I[2] = b.id(input(inputs, 'gamma'));
    I[3] = b.id(input(inputs, 'beta'));
    I[4] = attrs.groups as number;
    I[5] = attrs.swish ? 1 : 0;
    I[6] = fusedImpl === 'aten' ? 1 : 0;
    b.F[0] = attrs.eps as number;
    return b.run1(op);
  },
  [GROUP_NORM_ACT_GRAD]: (b, op, inputs, attrs) => {
    const I = b.I;
    I[0] = b.id(input(inputs, 'dy'));
    I[1] = b.id(input(inputs, 'x'));
    I[2] = b.id(input(inputs, 'shift'));
    I[3] = b.id(input(inputs, 'gamma'));
    I[4] = b.id(input(inputs, 'beta'));
    I[5] = attrs.groups as number;
    I[6] = attrs.swish ? 1 : 0;
    I[7] = fusedImpl === 'aten' ? 1 : 0;
    b.F[0] = attrs.eps as number;
    return b.runAll(op);
  },

  // linear algebra and convolution
  BatchMatMul: (b, op, inputs, attrs) => {
    b.I[0] = b.id(input(inputs, 'a'));
    b.I[1] = b.id(input(inputs, 'b'));
    b.I[2] = attrs.transposeA ? 1 : 0;
    b.I[3] = attrs.transposeB ? 1 : 0;
    return b.run1(op);
  },
  _FusedMatMul: (b, op, inputs, attrs) => {
    const bias = optional(inputs, 'bias');
    const prelu = optional(inputs, 'preluActivationWeights');
    const I = b.I;
    I[0] = b.id(input(inputs, 'a'));
    I[1] = b.id(input(inputs, 'b'));
    I[2] = bias ? b.id(bias) : -1;
    I[3] = attrs.transposeA ? 1 : 0;
    I[4] = attrs.transposeB ? 1 : 0;
    I[5] = activationCode(attrs.activation);
    I[6] = prelu ? b.id(prelu) : -1;
    b.F[0] = Number(attrs.leakyreluAlpha ?? 0.2);
    return b.run1(op);
  },
  Conv2D: conv2D,
  FusedConv2D: fusedConv2D,
  Conv2DBackpropInput: conv2DBackpropInput,
  Conv2DBackpropFilter: conv2DBackpropFilter,
};

/** tfjs kernel name -> addon op name, where they differ. */
export const ADDON_OP: Record<string, string> = {
  Multiply: 'Mul',
  ExpandDims: 'Reshape',
  [GROUP_NORM_ACT]: 'GroupNormAct',
  [GROUP_NORM_ACT_GRAD]: 'GroupNormActGrad',
};

/** Kernels the torch backend implements. */
export const TORCH_KERNELS: readonly string[] = Object.keys(KERNELS);
