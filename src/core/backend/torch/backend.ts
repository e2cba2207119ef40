/**
 * The `torch` KernelBackend: tensor storage, reads and writes. Tensors are libtorch tensors held
 * by the addon, on `cpu` or `cuda:i`.
 *
 * tfjs keeps one DataId per tensor buffer; ours maps it to an integer id in the addon's table.
 * A kernel call writes its arguments (ids, dtypes, shapes, flags) into one shared Int32Array and
 * Float64Array, calls `run(op)`, and reads each output's id, dtype and shape back from the same
 * buffer: one number crosses the boundary each way and no JS object is made on the native side.
 */
import * as tf from '@tensorflow/tfjs';
import type { TorchAddon, TypedArray } from './addon.js';

export const DTYPES = ['float32', 'int32', 'bool'] as const;
export type Dtype = (typeof DTYPES)[number];
export const DT: Record<string, number> = { float32: 0, int32: 1, bool: 2 };
/** Any dtype: keep the one libtorch gives. */
export const KEEP = -1;

export function dtypeCode(dtype: string, what: string): number {
  const c = DT[dtype];
  if (c === undefined) throw new Error(`torch backend: ${what}: dtype '${dtype}' is not supported (float32, int32, bool)`);
  return c;
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

  /**
   * Copies a float32 tensor's values into `into` (of its size) in one memcpy, with no array of
   * its own: gradients read back every step make no garbage. False when this backend does not
   * hold `dataId` (the caller reads it the usual way).
   */
  readInto(dataId: tf.DataId, into: Float32Array): boolean {
    if (!this.data.has(dataId)) return false;
    const e = this.data.get(dataId);
    if (e.dtype !== 'float32' || e.size !== into.length)
      throw new Error(`torch backend: readInto: a ${e.dtype} tensor of ${e.size} values into a Float32Array of ${into.length}`);
    this.native.read(e.id, into);
    return true;
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
