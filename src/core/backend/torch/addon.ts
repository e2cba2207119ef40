/**
 * Loading the torch addon (native/src/, entry point register.cc; built by native/build.mjs into
 * native/build/Release/scoreflow_torch.node), and the environment libtorch's libraries must find
 * when they load.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { packagePath } from '../../paths.js';

export type TypedArray = Float32Array | Int32Array | Uint8Array;

/** An object the addon made (a store server, a process group); opaque to JS. */
export type NativeHandle = object & { readonly __nativeHandle?: never };

/** The addon's c10d functions (native/src/c10d.cc); src/worker/collective/process-group.ts is the typed surface. */
export interface C10dOps {
  listen(host: string, port: number, requestTimeoutMs: number): Promise<NativeHandle>;
  storePort(store: NativeHandle): number;
  storeClose(store: NativeHandle): void;
  create(
    backend: string,
    storeHost: string,
    storePort: number,
    prefix: string,
    rank: number,
    worldSize: number,
    timeoutMs: number,
    iface: string,
    device: number,
  ): Promise<NativeHandle>;
  allreduce(group: NativeHandle, values: Float32Array): Promise<void>;
  close(group: NativeHandle): void;
}

/** Built without c10d, the addon has `info` alone. */
export interface C10dNative extends Partial<C10dOps> {
  info(): { gloo: boolean; nccl: boolean };
}

/**
 * One Adam + EMA update in place (native/src/adam.cc) with the mean of the gradient sum g over
 * `count` samples: the same double-precision arithmetic as the JavaScript update, so the same
 * bits. Returns -1, or the index of the first non-finite value of g (then nothing was written).
 * `scalars`: [scale, beta1, beta2, stepSize, sqrtBc2, eps, decay, count].
 */
export type NativeAdam = (
  g: Float32Array,
  p: Float32Array,
  m: Float32Array,
  v: Float32Array,
  ema: Float32Array,
  scalars: Float64Array,
) => number;

/** The addon's exports (see the N-API functions in native/src/addon.cc, and c10d.cc). */
export interface TorchAddon {
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
  /** Absent from an addon built before c10d was added. */
  c10d?: C10dNative;
  kInts: number;
  kOut: number;
  kFloats: number;
}

export const ADDON_PATH = ['native', 'build', 'Release', 'scoreflow_torch.node'] as const;

let addon: TorchAddon | undefined;

/**
 * Settings read once, when the libraries load, so they must be in the environment first; a value
 * the user set is kept.
 */
function setLoadTimeEnv(): void {
  // libtorch's OpenMP threads spin between kernels by default; on a machine shared with other
  // processes (or several workers) that spinning starves everyone: with 2 threads on 2 busy cores
  // a training step ran 7x slower than with passive waits. libgomp reads this when it loads.
  process.env.OMP_WAIT_POLICY ??= 'PASSIVE';
  // Debian's libtorch does its matMuls in OpenBLAS (the pthread build), whose worker threads spin
  // in sched_yield between calls and burn a core: a 150-step `scoreflow train --threads 1` spent
  // 20 s in the kernel out of 25 s wall, 1 s with this. The price: BLAS calls run on one thread
  // (the convolutions, most of the work, run in oneDNN on libtorch's own threads).
  process.env.OPENBLAS_NUM_THREADS ??= '1';
}

/** Loads the addon once; throws one line saying what to do when it is missing or broken. */
export function loadTorchAddon(): TorchAddon {
  if (addon) return addon;
  const file = packagePath(...ADDON_PATH);
  if (!existsSync(file)) {
    throw new Error(
      `the torch addon is not built (${ADDON_PATH.join('/')} is missing): install libtorch-dev or set LIBTORCH_DIR, then run node native/build.mjs --force`,
    );
  }
  setLoadTimeEnv();
  try {
    addon = createRequire(import.meta.url)(file) as TorchAddon;
  } catch (e) {
    const msg = (e instanceof Error ? e.message : String(e)).split('\n')[0];
    throw new Error(`the torch addon does not load (${msg}); rebuild it with node native/build.mjs --force`);
  }
  return addon;
}
