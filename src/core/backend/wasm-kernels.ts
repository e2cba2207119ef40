/**
 * What we change in @tensorflow/tfjs-backend-wasm (4.22) so that a ScoreNet trains on it:
 *   added     Conv2DBackpropFilter, which it lacks (the filter gradient of conv2d and of
 *             conv2dTranspose, whose Conv2DBackpropInput gradient calls it with x and dy swapped)
 *   replaced  Conv2DBackpropInput, whose stock loop is the slowest kernel of a training step
 *   fixed     the XNNPACK convolutions, which return zeros for some shapes with 'same' padding
 * The kernels themselves are in wasm-conv.ts.
 */
import * as tf from '@tensorflow/tfjs';
// Import for its side effect first, so that its own kernels are registered before we look.
import '@tensorflow/tfjs-backend-wasm';
import { conv2DBackpropFilter, conv2DBackpropInputVia, withExplicitSamePadding } from './wasm-conv.js';
import { WASM } from './wasm-ops.js';

/** Kernels we add to 'wasm' because it has none. */
const ADDED: ReadonlyArray<[string, tf.KernelFunc]> = [[tf.Conv2DBackpropFilter, conv2DBackpropFilter as tf.KernelFunc]];

/** Stock wasm kernels we wrap: the wrapper gets the stock kernelFunc to fall back on. */
const WRAPPED: ReadonlyArray<[string, 'replaced' | 'fixed', (stock: tf.KernelFunc) => tf.KernelFunc]> = [
  [tf.Conv2DBackpropInput, 'replaced', conv2DBackpropInputVia],
  [tf.Conv2D, 'fixed', (k) => withExplicitSamePadding(k, false)],
  [tf.FusedConv2D, 'fixed', (k) => withExplicitSamePadding(k, false)],
  [tf.DepthwiseConv2dNative, 'fixed', (k) => withExplicitSamePadding(k, true)],
  [tf.FusedDepthwiseConv2D, 'fixed', (k) => withExplicitSamePadding(k, true)],
];

const wrapped = new Set<string>();

/**
 * Adds the missing wasm kernels and wraps the others; idempotent. A kernel that a newer
 * tfjs-backend-wasm provides itself is not replaced by ours. Returns what it changed now.
 */
export function registerWasmKernels(): string[] {
  const changed: string[] = [];
  for (const [name, kernelFunc] of ADDED) {
    if (tf.getKernel(name, WASM) !== undefined) continue;
    tf.registerKernel({ kernelName: name, backendName: WASM, kernelFunc });
    changed.push(name);
  }
  for (const [name, , wrap] of WRAPPED) {
    const stock = tf.getKernel(name, WASM);
    if (stock === undefined || wrapped.has(name)) continue;
    // registerKernel would overwrite too, but warns. The wrapper keeps the stock setupFunc,
    // which tfjs calls again each time 'wasm' becomes the active backend.
    tf.unregisterKernel(name, WASM);
    tf.registerKernel({ ...stock, kernelFunc: wrap(stock.kernelFunc) });
    wrapped.add(name);
    changed.push(name);
  }
  return changed;
}

/** Kernels this module adds to wasm, replaces for speed, or wraps with a bug fix. */
export const wasmKernelChanges: { readonly added: string[]; readonly replaced: string[]; readonly fixed: string[] } = {
  added: ADDED.map(([name]) => name),
  replaced: WRAPPED.filter(([, why]) => why === 'replaced').map(([name]) => name),
  fixed: WRAPPED.filter(([, why]) => why === 'fixed').map(([name]) => name),
};
