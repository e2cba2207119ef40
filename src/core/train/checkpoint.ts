/**
 * Checkpoints in the interchange format: safetensors, float32, PyTorch state_dict names and
 * layouts at the top level (so `model.load_state_dict` takes them), and the training state
 * under the `train.` prefix: `train.ema.<name>`, `train.adam_m.<name>`, `train.adam_v.<name>`,
 * same layouts. `__metadata__` records step, epoch, seed and the model/SDE/training config.
 * Randomness is counter-based (src/core/rng.ts), so (seed, step) is the whole RNG state.
 */
import { decodeSafetensors, encodeSafetensors, getFloat32, readSafetensors, writeSafetensors, type SafetensorsFile, type TensorInput } from '../io/safetensors.js';
import { type ModelConfig, modelConfig } from '../model/config.js';
import { fromTorchLayout, numParams, paramInfos, toTorchLayout, type ParamInfo } from '../model/params.js';
import { SDE_DEFAULTS, type SdeConfig } from '../sde.js';
import type { OptimState } from './adam.js';
import { type TrainConfig, trainConfig } from './config.js';

export const FORMAT = 'scoreflow/1 ScoreNet state_dict, PyTorch layouts, float32';
const SLOTS = { ema: 'train.ema.', m: 'train.adam_m.', v: 'train.adam_v.' } as const;

function flatToTorch(infos: ParamInfo[], flat: Float32Array, prefix: string, out: Record<string, TensorInput>): void {
  for (const info of infos) {
    out[prefix + info.name] = { shape: info.torchShape, data: toTorchLayout(info, flat.subarray(info.offset, info.offset + info.size)) };
  }
}

function torchToFlat(file: SafetensorsFile, infos: ParamInfo[], prefix: string): Float32Array {
  const flat = new Float32Array(numParams(infos));
  for (const info of infos) flat.set(fromTorchLayout(info, getFloat32(file, prefix + info.name, info.torchShape)), info.offset);
  return flat;
}

export function encodeCheckpoint(cfg: TrainConfig, s: OptimState, extraMeta: Record<string, string> = {}): Buffer {
  const infos = paramInfos(cfg.model);
  const tensors: Record<string, TensorInput> = {};
  flatToTorch(infos, s.params, '', tensors);
  flatToTorch(infos, s.ema, SLOTS.ema, tensors);
  flatToTorch(infos, s.m, SLOTS.m, tensors);
  flatToTorch(infos, s.v, SLOTS.v, tensors);
  const perEpoch = extraMeta.steps_per_epoch ? Number(extraMeta.steps_per_epoch) : 0;
  return encodeSafetensors(tensors, {
    format: FORMAT,
    step: String(s.step),
    epoch: String(perEpoch ? Math.floor(s.step / perEpoch) : 0),
    seed: String(cfg.seed),
    model: JSON.stringify(cfg.model),
    sde: JSON.stringify(cfg.sde),
    train: JSON.stringify(cfg),
    rng: 'counter-based: Rng(seed, stream, step, index)',
    ...extraMeta,
  });
}

/** A full training state, from a file written by encodeCheckpoint. */
export function decodeCheckpoint(file: SafetensorsFile): { config: TrainConfig; state: OptimState } {
  const meta = file.metadata;
  if (!meta.train || !meta.step) {
    throw new Error(`${file.source}: not a training checkpoint (no training state in __metadata__); use it as weights with --ckpt instead`);
  }
  let config: TrainConfig;
  try {
    config = trainConfig(JSON.parse(meta.train));
  } catch (e) {
    throw new Error(`${file.source}: bad training config in __metadata__: ${(e as Error).message}`);
  }
  const infos = paramInfos(config.model);
  checkNames(file, infos);
  const state: OptimState = {
    params: torchToFlat(file, infos, ''),
    ema: torchToFlat(file, infos, SLOTS.ema),
    m: torchToFlat(file, infos, SLOTS.m),
    v: torchToFlat(file, infos, SLOTS.v),
    step: Number(meta.step),
  };
  if (!Number.isSafeInteger(state.step) || state.step < 0) throw new Error(`${file.source}: bad step '${meta.step}' in __metadata__`);
  return { config, state };
}

export function loadCheckpointBytes(bytes: Uint8Array, label = '<state>') {
  return decodeCheckpoint(decodeSafetensors(bytes, label));
}

export function loadTrainingCheckpoint(path: string) {
  return decodeCheckpoint(readSafetensors(path));
}

/** Every tensor must be a known parameter, possibly in a training-state slot. */
function checkNames(file: SafetensorsFile, infos: ParamInfo[]): void {
  const known = new Set(infos.map((i) => i.name));
  for (const name of file.tensors.keys()) {
    if (!known.has(name.replace(/^train\.(ema|adam_m|adam_v)\./, ''))) {
      throw new Error(`${file.source}: unexpected tensor '${name}' (not a ScoreNet parameter)`);
    }
  }
}

/** Model shape from the tensors of a bare PyTorch state_dict (conv1 [c0,1,3,3], conv2..4, embed.W [e/2]). */
export function inferModelConfig(file: SafetensorsFile): ModelConfig {
  const dim = (name: string, axis: number) => {
    const t = file.tensors.get(name);
    if (!t) throw new Error(`${file.source}: tensor '${name}' is missing; is this a ScoreNet checkpoint?`);
    return t.shape[axis];
  };
  if (dim('conv1.weight', 1) !== 1) throw new Error(`${file.source}: conv1.weight expects ${dim('conv1.weight', 1)} input channels; ScoreNet here takes 1-channel images`);
  const fromMeta = file.metadata.model ? (JSON.parse(file.metadata.model) as Partial<ModelConfig>) : {};
  return modelConfig({
    ...fromMeta,
    channels: [dim('conv1.weight', 0), dim('conv2.weight', 0), dim('conv3.weight', 0), dim('conv4.weight', 0)],
    embedDim: 2 * dim('embed.W', 0),
  });
}

export interface LoadedWeights {
  model: ModelConfig;
  sde: Required<SdeConfig>;
  /** Flat parameters in our layout. */
  params: Float32Array;
  /** Which set was loaded. */
  which: 'ema' | 'raw';
  step: number | null;
}

/**
 * Weights for inference from a training checkpoint (EMA by default) or a bare PyTorch
 * state_dict (e.g. exported with the reference's save_safetensors).
 */
export function loadWeights(path: string, opts: { ema?: boolean } = {}): LoadedWeights {
  const file = readSafetensors(path);
  const model = inferModelConfig(file);
  const infos = paramInfos(model);
  checkNames(file, infos);
  const sde = { ...SDE_DEFAULTS, ...(file.metadata.sde ? (JSON.parse(file.metadata.sde) as SdeConfig) : {}) } as Required<SdeConfig>;
  const useEma = opts.ema !== false && file.tensors.has(SLOTS.ema + infos[0].name);
  const params = torchToFlat(file, infos, useEma ? SLOTS.ema : '');
  const step = file.metadata.step !== undefined ? Number(file.metadata.step) : null;
  return { model, sde, params, which: useEma ? 'ema' : 'raw', step };
}

/** A bare PyTorch state_dict of the given flat parameters (e.g. to export EMA weights). */
export async function saveWeights(path: string, model: ModelConfig, params: Float32Array, meta: Record<string, string> = {}): Promise<void> {
  const tensors: Record<string, TensorInput> = {};
  flatToTorch(paramInfos(model), params, '', tensors);
  await writeSafetensors(path, tensors, { format: FORMAT, model: JSON.stringify(model), ...meta });
}
