/**
 * Registering the `torch` tfjs backend and its kernels, with the per-kernel call counters the
 * tests read and the optional timing counters (SCOREFLOW_TORCH_TIMES=1).
 */
import * as tf from '@tensorflow/tfjs';
import { loadTorchAddon, type TorchAddon } from './addon.js';
import { TorchBackend } from './backend.js';
import { ADDON_OP, KERNELS, type Attrs, type Inputs } from './kernels.js';
import { computeCores } from '../../cpus.js';

export interface TorchBackendOptions {
  /** 'cpu' (default), 'cuda' or 'cuda:N' (needs a libtorch built with CUDA). */
  device?: string;
  /** libtorch intra-op threads; default: computeCores() (core/cpus.ts). */
  threads?: number;
}

/**
 * With SCOREFLOW_TORCH_TIMES=1 in the environment at registration, each kernel's calls and
 * wall time (JS and libtorch together, without tfjs's own bookkeeping) are counted here.
 */
const kernelTimes: Map<string, { calls: number; ms: number }> | null = process.env.SCOREFLOW_TORCH_TIMES === '1' ? new Map() : null;

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
    if (op === undefined)
      throw new Error(`torch backend: the addon lacks op '${kernelName}'; rebuild it with node native/build.mjs --force`);
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
 * Registers tfjs backend 'torch' on `device` and makes it the active backend (the addon's Adam
 * is handed to trainers explicitly: ../native-adam.ts nativeAdamFor).
 * Throws one line when the addon is not built or does not load, or the device is not available.
 * Calling it again with another device replaces the backend (tensors on the old one are lost).
 */
export async function registerTorchBackend(opts: TorchBackendOptions = {}): Promise<void> {
  const device = opts.device ?? 'cpu';
  const threads = opts.threads ?? computeCores();
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
