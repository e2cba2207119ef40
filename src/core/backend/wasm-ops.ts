/**
 * Helpers for kernels that compose tfjs-backend-wasm's own kernels. Inside a kernel we call
 * other kernels directly (as tfjs backends do), not tf ops: no tape, no engine scope, and the
 * intermediates are ours to free.
 */
import * as tf from '@tensorflow/tfjs';

export const WASM = 'wasm';

export type Backend = tf.KernelBackend;
export type Info = tf.TensorInfo;
export type Shape4 = [number, number, number, number];
export type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

/** Runs wasm kernel `name`; `inputs` is a map, or an array for Concat. */
export function run(name: string, backend: Backend, inputs: tf.NamedTensorInfoMap | Info[], attrs: tf.NamedAttrMap = {}): Info {
  const kernel = tf.getKernel(name, WASM);
  if (kernel === undefined) throw new Error(`wasm backend has no '${name}' kernel`);
  const out = kernel.kernelFunc({ inputs: inputs as tf.NamedTensorInfoMap, backend, attrs });
  return Array.isArray(out) ? out[0] : out;
}

/** Releases intermediates; refcounted, so an aliased input stays alive. */
export function free(backend: Backend, ...infos: Info[]): void {
  for (const info of infos) backend.disposeData(info.dataId);
}

/** The same data seen with another shape of equal size (no copy, no new reference). */
export function view(info: Info, shape: number[]): Info {
  return { dataId: info.dataId, dtype: info.dtype, shape };
}

export function zeros(backend: Backend, shape: number[]): Info {
  return run('Fill', backend, {}, { shape, value: 0, dtype: 'float32' });
}

/** A new float32 tensor on `backend` holding `values`. */
export function upload(backend: Backend, shape: number[], values: Float32Array): Info {
  return (backend as unknown as { makeOutput(s: number[], d: string, o?: number, v?: Float32Array): Info }).makeOutput(
    shape,
    'float32',
    undefined,
    values,
  );
}

export function shape4(info: Info | number[], what: string): Shape4 {
  const shape = Array.isArray(info) ? info : info.shape;
  if (shape.length !== 4) throw new Error(`${what}: expected a rank-4 shape, got [${shape}]`);
  return shape as Shape4;
}
