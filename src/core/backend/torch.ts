/**
 * The `torch` tfjs backend: tensors are libtorch tensors held by our N-API addon
 * (native/src/scoreflow_torch.cc, built by native/build.mjs), on `cpu` or `cuda:i`.
 *
 * tfjs keeps one DataId per tensor buffer; ours maps it to an integer id in the addon's table.
 * A kernel call writes its arguments (ids, dtypes, shapes, flags) into one shared Int32Array and
 * Float64Array, calls `run(op)`, and reads each output's id, dtype and shape back from the same
 * buffer: one number crosses the boundary each way and no JS object is made on the native side.
 *
 * Every kernel here runs in libtorch; a kernel that is not listed is not registered for 'torch',
 * so tfjs fails with "Kernel 'X' not registered for backend 'torch'" rather than falling back.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { GROUP_NORM_ACT, GROUP_NORM_ACT_GRAD } from './fused.js';
import { packagePath } from '../paths.js';
import { setNativeAdam, type NativeAdam } from '../train/adam.js';

type TypedArray = Float32Array | Int32Array | Uint8Array;
type Attrs = Record<string, unknown>;
type Inputs = Record<string, tf.TensorInfo | undefined> | tf.TensorInfo[];

/** The addon's exports (see the N-API functions at the end of scoreflow_torch.cc). */
interface TorchAddon {
  init(buffer: ArrayBuffer, device: string): number;
  ops(): string[];
  run(op: number): number;
  create(values: TypedArray): number;
  read(id: number, into: TypedArray): void;
  free(id: number): void;
  stats(): [number, number];
  setThreads(n: number): number;
  info(): { cuda: boolean; gpus: number; threads: number; mkldnn: boolean };
  adam: NativeAdam;
  kInts: number;
  kOut: number;
  kFloats: number;
}

export interface TorchBackendOptions {
  /** 'cpu' (default), 'cuda' or 'cuda:N' (needs a libtorch built with CUDA). */
  device?: string;
  /** libtorch intra-op threads; default: all cores. */
  threads?: number;
}

export const ADDON_PATH = ['native', 'build', 'Release', 'scoreflow_torch.node'] as const;

const DTYPES = ['float32', 'int32', 'bool'] as const;
type Dtype = (typeof DTYPES)[number];
const DT: Record<string, number> = { float32: 0, int32: 1, bool: 2 };
/** Any dtype: keep the one libtorch gives. */
const KEEP = -1;

function dtypeCode(dtype: string, what: string): number {
  const c = DT[dtype];
  if (c === undefined) throw new Error(`torch backend: ${what}: dtype '${dtype}' is not supported (float32, int32, bool)`);
  return c;
}

let addon: TorchAddon | undefined;

/** Loads the addon once; throws one line saying what to do when it is missing or broken. */
export function loadTorchAddon(): TorchAddon {
  if (addon) return addon;
  const file = packagePath(...ADDON_PATH);
  if (!existsSync(file)) {
    throw new Error(
      `the torch addon is not built (${ADDON_PATH.join('/')} is missing): install libtorch-dev or set LIBTORCH_DIR, then run node native/build.mjs --force`,
    );
  }
  // libtorch's OpenMP threads spin between kernels by default; on a machine shared with other
  // processes (or several workers) that spinning starves everyone: with 2 threads on 2 busy cores
  // a training step ran 7x slower than with passive waits. libgomp reads this when it loads.
  process.env.OMP_WAIT_POLICY ??= 'PASSIVE';
  try {
    addon = createRequire(import.meta.url)(file) as TorchAddon;
  } catch (e) {
    const msg = (e instanceof Error ? e.message : String(e)).split('\n')[0];
    throw new Error(`the torch addon does not load (${msg}); rebuild it with node native/build.mjs --force`);
  }
  return addon;
}

interface Entry {
  id: number;
  size: number;
  dtype: Dtype;
  refCount: number;
}

export class TorchBackend extends tf.KernelBackend {
  readonly data: tf.DataStorage<Entry>;
  /** Argument buffer shared with the addon: ints, then floats. */
  readonly I: Int32Array;
  readonly F: Float64Array;
  readonly out: number;
  readonly opIndex: Map<string, number>;

  constructor(
    readonly native: TorchAddon,
    readonly device: string,
  ) {
    super();
    const buf = new ArrayBuffer(native.kInts * 4 + native.kFloats * 8);
    native.init(buf, device);
    this.I = new Int32Array(buf, 0, native.kInts);
    this.F = new Float64Array(buf, native.kInts * 4, native.kFloats);
    this.out = native.kOut;
    this.opIndex = new Map(native.ops().map((name, k) => [name, k]));
    this.data = new tf.DataStorage(this, tf.engine());
  }

  op(name: string): number {
    const k = this.opIndex.get(name);
    if (k === undefined) throw new Error(`torch backend: the addon has no op '${name}' (rebuild it: node native/build.mjs --force)`);
    return k;
  }

  /** The addon's id for a tensor, moving it here first if another backend holds it. */
  id(t: tf.TensorInfo): number {
    return this.data.get(t.dataId).id;
  }

  private adopt(id: number, dtype: Dtype, shape: number[]): tf.TensorInfo {
    const dataId = {};
    let size = 1;
    for (const d of shape) size *= d;
    this.data.set(dataId, { id, size, dtype, refCount: 1 });
    return { dataId, shape, dtype };
  }

  private values(values: tf.BackendValues, dtype: string): TypedArray {
    switch (dtype) {
      case 'float32':
        return values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>);
      case 'int32':
        return values instanceof Int32Array ? values : Int32Array.from(values as ArrayLike<number>);
      case 'bool':
        return values instanceof Uint8Array ? values : Uint8Array.from(values as ArrayLike<number>);
    }
    throw new Error(`torch backend: dtype '${dtype}' is not supported (float32, int32, bool)`);
  }

  private upload(values: tf.BackendValues, shape: number[], dtype: string): number {
    const v = this.values(values, dtype);
    const I = this.I;
    I[0] = dtypeCode(dtype, 'write');
    I[1] = shape.length;
    for (let d = 0; d < shape.length; d++) I[2 + d] = shape[d];
    return this.native.create(v);
  }

  override write(values: tf.BackendValues, shape: number[], dtype: tf.DataType): tf.DataId {
    const dataId = {};
    const id = this.upload(values, shape, dtype);
    this.data.set(dataId, { id, size: tf.util.sizeFromShape(shape), dtype: dtype as Dtype, refCount: 1 });
    return dataId;
  }

  override move(dataId: tf.DataId, values: tf.BackendValues, shape: number[], dtype: tf.DataType, refCount: number): void {
    const id = this.upload(values, shape, dtype);
    this.data.set(dataId, { id, size: tf.util.sizeFromShape(shape), dtype: dtype as Dtype, refCount });
  }

  override readSync(dataId: tf.DataId): tf.BackendValues {
    const e = this.data.get(dataId);
    const into = e.dtype === 'float32' ? new Float32Array(e.size) : e.dtype === 'int32' ? new Int32Array(e.size) : new Uint8Array(e.size);
    this.native.read(e.id, into);
    return into;
  }

  override async read(dataId: tf.DataId): Promise<tf.BackendValues> {
    return this.readSync(dataId);
  }

  override readToGPU(): never {
    throw new Error('torch backend: readToGPU is not supported; use read() or dataSync()');
  }

  override createTensorFromGPUData(): never {
    throw new Error('torch backend: createTensorFromGPUData is not supported');
  }

  override refCount(dataId: tf.DataId): number {
    return this.data.has(dataId) ? this.data.get(dataId).refCount : 0;
  }

  override incRef(dataId: tf.DataId): void {
    this.data.get(dataId).refCount++;
  }

  override disposeData(dataId: tf.DataId, force = false): boolean {
    if (!this.data.has(dataId)) return true;
    const e = this.data.get(dataId);
    e.refCount--;
    if (!force && e.refCount > 0) return false;
    this.native.free(e.id);
    this.data.delete(dataId);
    return true;
  }

  override numDataIds(): number {
    return this.data.numDataIds();
  }

  override memory(): { unreliable: boolean; reasons?: string[]; numTorchTensors: number; numTorchBytes: number } {
    const [numTorchTensors, numTorchBytes] = this.native.stats();
    return { unreliable: false, numTorchTensors, numTorchBytes };
  }

  override async time(f: () => void): Promise<tf.BackendTimingInfo> {
    const start = performance.now();
    f();
    return { kernelMs: performance.now() - start };
  }

  override floatPrecision(): 32 {
    return 32;
  }

  override dispose(): void {
    // Tensors still registered die with their DataIds; the addon frees what tfjs disposes.
  }

  /** Runs op `k` with the arguments already in the buffer; returns every output. */
  runAll(k: number): tf.TensorInfo[] {
    const n = this.native.run(k);
    const I = this.I;
    let p = this.out + 1;
    const outs: tf.TensorInfo[] = new Array(n);
    for (let j = 0; j < n; j++) {
      const id = I[p];
      const dtype = DTYPES[I[p + 1]];
      const nd = I[p + 2];
      const shape: number[] = new Array(nd);
      for (let d = 0; d < nd; d++) shape[d] = I[p + 3 + d];
      outs[j] = this.adopt(id, dtype, shape);
      p += 3 + nd;
    }
    return outs;
  }

  /** Runs op `k` that has exactly one output. */
  run1(k: number): tf.TensorInfo {
    this.native.run(k);
    const I = this.I;
    const p = this.out + 1;
    const nd = I[p + 2];
    const shape: number[] = new Array(nd);
    for (let d = 0; d < nd; d++) shape[d] = I[p + 3 + d];
    return this.adopt(I[p], DTYPES[I[p + 1]], shape);
  }

  /** Writes a list of ints at I[at..]; returns the index after it. */
  ints(at: number, values: readonly number[]): number {
    const I = this.I;
    for (let j = 0; j < values.length; j++) I[at + j] = values[j];
    return at + values.length;
  }
}

// ------------------------------------------------------------------------ fused GroupNorm op

let fusedImpl: 'native' | 'aten' = 'native';
/** Which implementation the fused GroupNorm kernels use on CPU: hand-vectorised loops or ATen ops. */
export function setFusedGroupNormImpl(impl: 'native' | 'aten'): void {
  fusedImpl = impl;
}

// ------------------------------------------------------------------------ kernels

type KernelImpl = (b: TorchBackend, op: number, inputs: Inputs, attrs: Attrs) => tf.TensorInfo | tf.TensorInfo[];

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

/** Cumsum/Cumprod: I0 x, I1 axis, I2 exclusive, I3 reverse, I4 out dtype (as the input). */
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

/** Writes a conv's strides, pads (top, bottom, left, right) and dilations at I[at..at+8). */
function convArgs(b: TorchBackend, at: number, info: tf.backend_util.Conv2DInfo): void {
  const I = b.I;
  const p = info.padInfo;
  I[at] = info.strideHeight;
  I[at + 1] = info.strideWidth;
  I[at + 2] = p.top;
  I[at + 3] = p.bottom;
  I[at + 4] = p.left;
  I[at + 5] = p.right;
  I[at + 6] = info.dilationHeight;
  I[at + 7] = info.dilationWidth;
}

function nhwcOnly(attrs: Attrs, kernel: string): void {
  const f = attrs.dataFormat as string | undefined;
  if (f !== undefined && f !== 'NHWC' && f !== 'channelsLast') {
    throw new Error(`torch backend: ${kernel} supports dataFormat NHWC only, got ${f}`);
  }
}

type Pad = 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
type Rounding = 'floor' | 'round' | 'ceil' | undefined;

const conv2D: KernelImpl = (b, op, inputs, attrs) => {
  nhwcOnly(attrs, 'Conv2D');
  const x = input(inputs, 'x');
  const filter = input(inputs, 'filter');
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    filter.shape as [number, number, number, number],
    attrs.strides as number | [number, number],
    (attrs.dilations as number | [number, number]) ?? 1,
    attrs.pad as Pad,
    attrs.dimRoundingMode as Rounding,
  );
  b.I[0] = b.id(x);
  b.I[1] = b.id(filter);
  convArgs(b, 2, info);
  return b.run1(op);
};

const fusedConv2D: KernelImpl = (b, op, inputs, attrs) => {
  nhwcOnly(attrs, 'FusedConv2D');
  const x = input(inputs, 'x');
  const filter = input(inputs, 'filter');
  const bias = optional(inputs, 'bias');
  const prelu = optional(inputs, 'preluActivationWeights');
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    filter.shape as [number, number, number, number],
    attrs.strides as number | [number, number],
    (attrs.dilations as number | [number, number]) ?? 1,
    attrs.pad as Pad,
    attrs.dimRoundingMode as Rounding,
  );
  const I = b.I;
  I[0] = b.id(x);
  I[1] = b.id(filter);
  convArgs(b, 2, info);
  I[10] = bias ? b.id(bias) : -1;
  I[11] = activationCode(attrs.activation);
  I[12] = prelu ? b.id(prelu) : -1;
  b.F[0] = Number(attrs.leakyreluAlpha ?? 0.2);
  return b.run1(op);
};

const conv2DBackpropInput: KernelImpl = (b, op, inputs, attrs) => {
  nhwcOnly(attrs, 'Conv2DBackpropInput');
  const dy = input(inputs, 'dy');
  const filter = input(inputs, 'filter');
  const xShape = attrs.inputShape as [number, number, number, number];
  const info = tf.backend_util.computeConv2DInfo(
    xShape,
    filter.shape as [number, number, number, number],
    attrs.strides as number | [number, number],
    1,
    attrs.pad as Pad,
    attrs.dimRoundingMode as Rounding,
  );
  b.I[0] = b.id(dy);
  b.I[1] = b.id(filter);
  convArgs(b, 2, info);
  b.ints(10, xShape);
  return b.run1(op);
};

const conv2DBackpropFilter: KernelImpl = (b, op, inputs, attrs) => {
  nhwcOnly(attrs, 'Conv2DBackpropFilter');
  const x = input(inputs, 'x');
  const dy = input(inputs, 'dy');
  const filterShape = attrs.filterShape as [number, number, number, number];
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    filterShape,
    attrs.strides as number | [number, number],
    1,
    attrs.pad as Pad,
    attrs.dimRoundingMode as Rounding,
  );
  b.I[0] = b.id(x);
  b.I[1] = b.id(dy);
  convArgs(b, 2, info);
  b.ints(10, filterShape);
  return b.run1(op);
};

/** Writes x and a list of ints (I0 x, I1 n, I2.. values) and runs. */
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
const KERNELS: Record<string, KernelImpl> = {
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
const ADDON_OP: Record<string, string> = {
  Multiply: 'Mul',
  ExpandDims: 'Reshape',
  [GROUP_NORM_ACT]: 'GroupNormAct',
  [GROUP_NORM_ACT_GRAD]: 'GroupNormActGrad',
};

/** Kernels the torch backend implements. */
export const TORCH_KERNELS: readonly string[] = Object.keys(KERNELS);

/**
 * With SCOREFLOW_TORCH_TIMES=1 in the environment at registration, each kernel's calls and
 * wall time (JS and libtorch together, without tfjs's own bookkeeping) are counted here.
 */
const kernelTimes: Map<string, { calls: number; ms: number }> | null =
  process.env.SCOREFLOW_TORCH_TIMES === '1' ? new Map() : null;

function timedKernel(name: string, run: tf.KernelFunc): tf.KernelFunc {
  const entry = { calls: 0, ms: 0 };
  kernelTimes?.set(name, entry);
  return (args) => {
    const t0 = performance.now();
    const out = run(args);
    entry.ms += performance.now() - t0;
    entry.calls++;
    return out;
  };
}

/** Per-kernel calls and milliseconds since the last call (empty unless SCOREFLOW_TORCH_TIMES=1). */
export function takeKernelTimes(): Record<string, { calls: number; ms: number }> {
  const out: Record<string, { calls: number; ms: number }> = {};
  for (const [k, v] of kernelTimes ?? []) {
    if (v.calls > 0) out[k] = { ...v };
    v.calls = 0;
    v.ms = 0;
  }
  return out;
}

const kernelCalls = new Map<string, { calls: number }>();

/** How many times each torch kernel has run in this thread (tests check coverage with it). */
export function torchKernelCalls(): Record<string, number> {
  return Object.fromEntries([...kernelCalls].map(([k, v]) => [k, v.calls]));
}

let kernelsRegistered = false;
let registeredDevice: string | undefined;

function registerKernels(native: TorchAddon): void {
  if (kernelsRegistered) return;
  const names = new Map(native.ops().map((n, k) => [n, k]));
  for (const [kernelName, impl] of Object.entries(KERNELS)) {
    const op = names.get(ADDON_OP[kernelName] ?? kernelName);
    if (op === undefined) throw new Error(`torch backend: the addon lacks op '${kernelName}'; rebuild it with node native/build.mjs --force`);
    const counter = { calls: 0 };
    kernelCalls.set(kernelName, counter);
    const run: tf.KernelFunc = ({ inputs, attrs, backend }) => {
      counter.calls++;
      return impl(backend as TorchBackend, op, inputs as unknown as Inputs, attrs as unknown as Attrs) as tf.TensorInfo;
    };
    tf.registerKernel({ kernelName, backendName: 'torch', kernelFunc: kernelTimes ? timedKernel(kernelName, run) : run });
  }
  kernelsRegistered = true;
}

/**
 * Registers tfjs backend 'torch' on `device` and makes it the active backend.
 * Throws one line when the addon is not built or does not load, or the device is not available.
 * Calling it again with another device replaces the backend (tensors on the old one are lost).
 */
export async function registerTorchBackend(opts: TorchBackendOptions = {}): Promise<void> {
  const device = opts.device ?? 'cpu';
  const threads = opts.threads ?? availableParallelism();
  if (!(Number.isInteger(threads) && threads >= 1)) throw new Error(`torch backend: threads must be a positive integer, got ${threads}`);
  const native = loadTorchAddon();
  if (registeredDevice !== device) {
    const backend = new TorchBackend(native, device); // throws for an unavailable device
    if (registeredDevice !== undefined) tf.removeBackend('torch');
    tf.registerBackend('torch', () => backend);
    registeredDevice = device;
  }
  native.setThreads(threads);
  registerKernels(native);
  setNativeAdam(native.adam);
  if (!(await tf.setBackend('torch'))) throw new Error(`torch backend: tfjs could not initialise it on ${device}`);
}

/** Live libtorch tensors held by the addon in this thread (for leak checks). */
export function torchLiveTensors(): number {
  return loadTorchAddon().stats()[0];
}

/** What the loaded addon's libtorch offers. */
export function torchInfo(): { cuda: boolean; gpus: number; threads: number; mkldnn: boolean } {
  return loadTorchAddon().info();
}
