/**
 * Chooses and initialises the tfjs backend. Model code is written once against
 * `@tensorflow/tfjs`; this module only decides which engine runs the kernels.
 *
 *   torch       our libtorch N-API addon (./torch/index.js), CPU or CUDA
 *   tensorflow  @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node, when the user installed one
 *   wasm        @tensorflow/tfjs-backend-wasm (XNNPACK), always there; plus our extra kernels
 *   cpu         pure JS reference
 *   auto        the first of torch, tensorflow, wasm, cpu that loads (fastest first)
 */
import * as tf from '@tensorflow/tfjs';
import { getThreadsCount, setThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import { registerWasmKernels, wasmKernelChanges } from './wasm-kernels.js';

export { registerWasmKernels, wasmKernelChanges } from './wasm-kernels.js';

export const BACKEND_NAMES = ['auto', 'torch', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];
export type ConcreteBackendName = Exclude<BackendName, 'auto'>;

/** The order `auto` tries, fastest first. */
export const AUTO_ORDER: readonly ConcreteBackendName[] = ['torch', 'tensorflow', 'wasm', 'cpu'];

export interface InitBackendOptions {
  /** torch: libtorch intra-op threads (default computeCores(), core/cpus.ts). wasm: XNNPACK threads, which
   *  have no effect under Node today (see loadWasm). */
  threads?: number;
  /** torch device, e.g. 'cpu', 'cuda', 'cuda:1'; passed to registerTorchBackend. */
  device?: string;
  /** Receives the one-line report of the choice; default: stderr. */
  log?: (line: string) => void;
}

export interface BackendInfo {
  /** tfjs backend name in use. */
  name: string;
  /** wasm: whether the SIMD build was loaded. */
  simd?: boolean;
  /** wasm: threads XNNPACK actually uses; torch: libtorch intra-op threads. */
  threads?: number;
  /** wasm: kernels this project adds to the stock backend. */
  extraKernels?: string[];
  /** wasm: stock kernels this project replaces with faster ones. */
  replacedKernels?: string[];
  /** wasm: stock kernels this project wraps with a bug fix. */
  fixedKernels?: string[];
  /** torch: requested device. */
  device?: string;
  /** tensorflow: the npm package that provided it. */
  package?: string;
}

export function isBackendName(name: string): name is BackendName {
  return (BACKEND_NAMES as readonly string[]).includes(name);
}

let current: BackendInfo | undefined;

/** What is running now, for logs and bench JSON. */
export function backendInfo(): BackendInfo {
  const name = tf.getBackend() ?? 'none';
  if (current !== undefined && current.name === name) return { ...current };
  return { name };
}

/**
 * Copies float32 tensor `t`'s values into `into` (of its size): straight from the backend's memory
 * where the backend can (torch), else through the fresh array dataSync makes. For reads in a
 * training step's hot path, so they leave no garbage behind.
 */
export function readInto(t: tf.Tensor, into: Float32Array): void {
  if (t.dtype !== 'float32' || t.size !== into.length)
    throw new Error(`readInto: a ${t.dtype} tensor of ${t.size} values into a Float32Array of ${into.length}`);
  const b = tf.backend() as Partial<{ readInto(dataId: tf.DataId, into: Float32Array): boolean }>;
  if (typeof b.readInto === 'function' && b.readInto(t.dataId, into)) return;
  into.set(t.dataSync() as Float32Array);
}

/**
 * Initialises backend `name` and makes it tfjs's active backend; resolves to the name in use.
 * Fails with a one-line Error when the named backend cannot load (for `auto`, only if none can).
 */
export async function initBackend(name: BackendName = 'auto', opts: InitBackendOptions = {}): Promise<string> {
  if (!isBackendName(name)) {
    throw new Error(`unknown backend '${String(name)}': expected one of ${BACKEND_NAMES.join(', ')}`);
  }
  if (opts.threads !== undefined && !(Number.isInteger(opts.threads) && opts.threads >= 1)) {
    throw new Error(`threads must be a positive integer, got ${opts.threads}`);
  }
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  if (name !== 'auto') {
    const info = await load(name, opts).catch((e: unknown) => {
      throw new Error(`${name} backend unavailable: ${firstLine(e)}`);
    });
    return adopt(info, [], log);
  }
  const skipped: string[] = [];
  for (const candidate of AUTO_ORDER) {
    try {
      return adopt(await load(candidate, opts), skipped, log);
    } catch (e) {
      skipped.push(`${candidate} unavailable: ${firstLine(e)}`);
    }
  }
  throw new Error(`no backend could be initialised: ${skipped.join('; ')}`);
}

function adopt(info: BackendInfo, skipped: string[], log: (line: string) => void): string {
  current = info;
  const notes = [...describe(info), ...(skipped.length > 0 ? [`auto: ${skipped.join('; ')}`] : [])];
  log(`backend: ${info.name}${notes.length > 0 ? ` (${notes.join('; ')})` : ''}`);
  return info.name;
}

function describe(info: BackendInfo): string[] {
  const out: string[] = [];
  if (info.name === 'wasm') {
    out.push(`${info.simd === true ? 'simd' : 'no simd'}, ${threads(info.threads)}`);
  }
  if (info.device !== undefined) {
    out.push(`device ${info.device}${info.threads !== undefined ? `, ${threads(info.threads)}` : ''}`);
  }
  if (info.package !== undefined) out.push(`from ${info.package}`);
  return out;
}

function threads(n: number | undefined): string {
  return `${n} thread${n === 1 ? '' : 's'}`;
}

function load(name: ConcreteBackendName, opts: InitBackendOptions): Promise<BackendInfo> {
  switch (name) {
    case 'torch':
      return loadTorch(opts);
    case 'tensorflow':
      return loadTensorflow();
    case 'wasm':
      return loadWasm(opts);
    case 'cpu':
      return loadCpu();
  }
}

/** Makes `name` the active tfjs backend; tfjs itself only answers true/false. */
async function activate(name: string): Promise<void> {
  if (!(await tf.setBackend(name))) throw new Error(`tfjs could not initialise its '${name}' backend`);
  await tf.ready();
}

// A variable, so that tsc neither resolves nor requires the file before torch/ exists.
const TORCH_MODULE: string = './torch/index.js';

interface TorchModule {
  registerTorchBackend?: (opts: { device?: string; threads?: number }) => unknown;
  torchInfo?: () => { threads: number };
}

async function loadTorch(opts: InitBackendOptions): Promise<BackendInfo> {
  let mod: TorchModule;
  try {
    mod = (await import(TORCH_MODULE)) as TorchModule;
  } catch (e) {
    if (isMissingModule(e, 'torch/index.js')) throw new Error('not part of this build (no src/core/backend/torch/)');
    throw e;
  }
  if (typeof mod.registerTorchBackend !== 'function') throw new Error('./torch/index.js exports no registerTorchBackend');
  await mod.registerTorchBackend({ device: opts.device, threads: opts.threads });
  await activate('torch');
  const threads = typeof mod.torchInfo === 'function' ? mod.torchInfo().threads : undefined;
  return { name: 'torch', device: opts.device ?? 'cpu', threads };
}

// Optional: their install scripts download libtensorflow, so they are never dependencies.
const TENSORFLOW_PACKAGES = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'];

async function loadTensorflow(): Promise<BackendInfo> {
  const failures: string[] = [];
  for (const pkg of TENSORFLOW_PACKAGES) {
    try {
      await import(pkg);
    } catch (e) {
      if (!isMissingPackage(e, pkg)) failures.push(`${pkg} is installed but failed to load: ${firstLine(e)}`);
      continue;
    }
    if (tf.findBackendFactory('tensorflow') === null) {
      throw new Error(
        `${pkg} registered no 'tensorflow' backend with this @tensorflow/tfjs ${tf.version_core}; install a matching version`,
      );
    }
    await activate('tensorflow');
    return { name: 'tensorflow', package: pkg };
  }
  if (failures.length > 0) throw new Error(failures.join('; '));
  throw new Error(
    'neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed; run `npm install @tensorflow/tfjs-node` ' +
      '(or `npm install @tensorflow/tfjs-node-gpu` for CUDA), whose install downloads libtensorflow',
  );
}

async function loadWasm(opts: InitBackendOptions): Promise<BackendInfo> {
  registerWasmKernels();
  // tfjs-backend-wasm 4.22 never picks its threaded build under Node: the
  // WASM_HAS_MULTITHREAD_SUPPORT flag is hard-wired false there, and forcing it fails because
  // the pthread workers are blob: URLs that node's Worker refuses (tfjs issue 3830). The count
  // is still handed over (it takes effect only if a later release threads under Node) and the
  // count actually used is reported; parallelism comes from one wasm instance per worker thread.
  if (opts.threads !== undefined) setThreadsCount(opts.threads);
  await activate('wasm');
  const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true;
  return {
    name: 'wasm',
    simd,
    threads: getThreadsCount(),
    extraKernels: [...wasmKernelChanges.added],
    replacedKernels: [...wasmKernelChanges.replaced],
    fixedKernels: [...wasmKernelChanges.fixed],
  };
}

async function loadCpu(): Promise<BackendInfo> {
  await activate('cpu');
  // The cpu backend greets its first tensor under Node with a multi-line banner urging
  // tfjs-node; our one-line log already says what runs and why, so mute it (private field).
  const cpu = tf.findBackend('cpu') as unknown as { firstUse?: boolean } | null;
  if (cpu !== null && typeof cpu.firstUse === 'boolean') cpu.firstUse = false;
  return { name: 'cpu' };
}

function firstLine(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return (
    text
      .split('\n')
      .find((l) => l.trim() !== '')
      ?.trim() ?? 'unknown error'
  );
}

function errorCode(e: unknown): unknown {
  return typeof e === 'object' && e !== null ? (e as { code?: unknown }).code : undefined;
}

/** True when the ESM loader could not find `pkg` itself (not one of its own imports). */
function isMissingPackage(e: unknown, pkg: string): boolean {
  return errorCode(e) === 'ERR_MODULE_NOT_FOUND' && firstLine(e).includes(`Cannot find package '${pkg}'`);
}

function isMissingModule(e: unknown, file: string): boolean {
  const line = firstLine(e);
  return errorCode(e) === 'ERR_MODULE_NOT_FOUND' && line.startsWith('Cannot find module') && line.includes(`/${file}'`);
}
