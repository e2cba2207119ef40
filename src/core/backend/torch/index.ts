/**
 * The `torch` tfjs backend: our libtorch N-API addon (native/), on `cpu` or `cuda:i`.
 *
 *   addon.ts     loading the addon, and the environment its libraries read when they load
 *   backend.ts   the KernelBackend: tensor storage, reads and writes, the argument buffer
 *   kernels.ts   the kernel table: tfjs kernels written into the addon's argument slots
 *   register.ts  registering the backend and its kernels; call and timing counters
 */
export { ADDON_PATH, loadTorchAddon, type TorchAddon } from './addon.js';
export { TorchBackend } from './backend.js';
export { TORCH_KERNELS, setFusedGroupNormImpl } from './kernels.js';
export {
  registerTorchBackend,
  takeKernelTimes,
  torchInfo,
  torchKernelCalls,
  torchLiveTensors,
  type TorchBackendOptions,
} from './register.js';
