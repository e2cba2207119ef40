/**
 * The native Adam update a backend has (today the torch addon's), for whoever builds a Trainer
 * or trains the classifier to hand to the optimiser (src/core/train/adam.ts) explicitly.
 */
import { loadTorchAddon, type NativeAdam } from './torch/addon.js';

export type { NativeAdam };

/** The native Adam of the running backend `backend` (its addon's on torch), or undefined: the optimiser then runs its JavaScript loop. */
export function nativeAdamFor(backend: string): NativeAdam | undefined {
  return backend === 'torch' ? loadTorchAddon().adam : undefined;
}
