/**
 * ScoreNet weights in the interchange format: safetensors, float32, PyTorch state_dict
 * names and layouts (so `model.load_state_dict` takes them, and a state_dict exported from
 * PyTorch loads here). A training checkpoint (core/train/checkpoint.ts) is such a file with
 * the training state beside the weights under `train.`; inference takes its EMA weights
 * (`train.ema.<name>`) by default.
 */
import { readSafetensors, getFloat32, writeSafetensors, type SafetensorsFile, type TensorInput } from '../io/safetensors.js';
import { SDE_DEFAULTS, type SdeConfig } from '../sde.js';
import { type ModelConfig, modelConfig } from './config.js';
import { fromTorchLayout, numParams, paramInfos, toTorchLayout, type ParamInfo } from './params.js';

export const FORMAT = 'scoreflow/1 ScoreNet state_dict, PyTorch layouts, float32';

/** Where a training checkpoint keeps the EMA of the weights. */
export const EMA_PREFIX = 'train.ema.';

/** Every slot a training checkpoint may hold beside the weights (the EMA, Adam's moments). */
export const TRAIN_PREFIXES = [EMA_PREFIX, 'train.adam_m.', 'train.adam_v.'] as const;

/** Flat parameters (our layout) as state_dict tensors named prefix + name, into `out`. */
export function flatToStateDict(infos: ParamInfo[], flat: Float32Array, prefix: string, out: Record<string, TensorInput>): void {
  for (const info of infos) {
    out[prefix + info.name] = { shape: info.torchShape, data: toTorchLayout(info, flat.subarray(info.offset, info.offset + info.size)) };
  }
}

/** The state_dict tensors prefix + name of a file as flat parameters in our layout. */
export function stateDictToFlat(file: SafetensorsFile, infos: ParamInfo[], prefix: string): Float32Array {
  const flat = new Float32Array(numParams(infos));
  for (const info of infos) flat.set(fromTorchLayout(info, getFloat32(file, prefix + info.name, info.torchShape)), info.offset);
  return flat;
}

/** Every tensor must be a known parameter, bare or under one of `prefixes`. */
export function checkNames(file: SafetensorsFile, infos: ParamInfo[], prefixes: readonly string[]): void {
  const known = new Set(infos.map((i) => i.name));
  for (const name of file.tensors.keys()) {
    const bare = prefixes.reduce((n, p) => (n.startsWith(p) ? n.slice(p.length) : n), name);
    if (!known.has(bare)) throw new Error(`${file.source}: unexpected tensor '${name}' (not a ScoreNet parameter)`);
  }
}

/** Model shape from the tensors of a bare PyTorch state_dict (conv1 [c0,1,3,3], conv2..4, embed.W [e/2]). */
export function inferModelConfig(file: SafetensorsFile): ModelConfig {
  const dim = (name: string, axis: number) => {
    const t = file.tensors.get(name);
    if (!t) throw new Error(`${file.source}: tensor '${name}' is missing; is this a ScoreNet checkpoint?`);
    return t.shape[axis];
  };
  if (dim('conv1.weight', 1) !== 1)
    throw new Error(`${file.source}: conv1.weight expects ${dim('conv1.weight', 1)} input channels; ScoreNet here takes 1-channel images`);
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
  /**
   * A scoreflow file without a data digest (written before checkpoints carried one): loaded,
   * but its bytes could not be verified; the CLI says so once. Bare PyTorch state_dicts never
   * carried one and are not flagged.
   */
  unverified: boolean;
}

/** Ours (a scoreflow checkpoint or weights file) but without data_sha256: see LoadedWeights.unverified. */
function isUnverifiedScoreflowFile(file: SafetensorsFile): boolean {
  return file.digest === 'none' && (file.metadata.format === FORMAT || file.metadata.train !== undefined);
}

/**
 * Weights for inference from a training checkpoint (EMA by default) or a bare PyTorch
 * state_dict (e.g. exported with the reference's save_safetensors).
 */
export function loadWeights(path: string, opts: { ema?: boolean } = {}): LoadedWeights {
  const file = readSafetensors(path);
  const model = inferModelConfig(file);
  const infos = paramInfos(model);
  checkNames(file, infos, TRAIN_PREFIXES);
  const sde = { ...SDE_DEFAULTS, ...(file.metadata.sde ? (JSON.parse(file.metadata.sde) as SdeConfig) : {}) } as Required<SdeConfig>;
  const useEma = opts.ema !== false && file.tensors.has(EMA_PREFIX + infos[0].name);
  const params = stateDictToFlat(file, infos, useEma ? EMA_PREFIX : '');
  const step = file.metadata.step !== undefined ? Number(file.metadata.step) : null;
  return { model, sde, params, which: useEma ? 'ema' : 'raw', step, unverified: isUnverifiedScoreflowFile(file) };
}

/** A bare PyTorch state_dict of the given flat parameters (e.g. to export EMA weights). */
export async function saveWeights(
  path: string,
  model: ModelConfig,
  params: Float32Array,
  meta: Record<string, string> = {},
): Promise<void> {
  const tensors: Record<string, TensorInput> = {};
  flatToStateDict(paramInfos(model), params, '', tensors);
  await writeSafetensors(path, tensors, { format: FORMAT, model: JSON.stringify(model), ...meta }, { digest: true });
}
