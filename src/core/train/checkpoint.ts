/**
 * Checkpoints in the interchange format: safetensors, float32, PyTorch state_dict names and
 * layouts at the top level (so `model.load_state_dict` takes them), and the training state
 * under the `train.` prefix: `train.ema.<name>`, `train.adam_m.<name>`, `train.adam_v.<name>`,
 * same layouts. `__metadata__` records step, epoch, seed and the model/SDE/training config.
 * Randomness is counter-based (src/core/rng.ts), so (seed, step) is the whole RNG state.
 *
 * A checkpoint carries what a resume needs to trust it: its step, the run it belongs to
 * (`run`, stamped by whoever writes the file: `scoreflow train` or the coordinator) and
 * `data_sha256`, the SHA-256 of its tensor bytes, checked on every load (io/safetensors.ts).
 * Checkpoints from before the digest load unverified (`digest: 'none'`; callers say so).
 */
import {
  CorruptDataError,
  decodeSafetensors,
  encodeSafetensors,
  inspectSafetensors,
  readSafetensors,
  type DigestStatus,
  type SafetensorsFile,
  type TensorInput,
} from '../io/safetensors.js';
import { paramInfos } from '../model/params.js';
import { checkNames, flatToStateDict, FORMAT, stateDictToFlat, TRAIN_PREFIXES } from '../model/weights.js';
import type { OptimState } from './adam.js';
import { type TrainConfig, trainConfig } from './config.js';

const SLOTS = { ema: TRAIN_PREFIXES[0], m: TRAIN_PREFIXES[1], v: TRAIN_PREFIXES[2] } as const;

/** Steps between checkpoints, for `scoreflow train` and `coordinator start` alike (`--ckpt-every`). */
export const CHECKPOINT_EVERY = 200;

export function encodeCheckpoint(cfg: TrainConfig, s: OptimState, extraMeta: Record<string, string> = {}): Buffer {
  const infos = paramInfos(cfg.model);
  const tensors: Record<string, TensorInput> = {};
  flatToStateDict(infos, s.params, '', tensors);
  flatToStateDict(infos, s.ema, SLOTS.ema, tensors);
  flatToStateDict(infos, s.m, SLOTS.m, tensors);
  flatToStateDict(infos, s.v, SLOTS.v, tensors);
  const perEpoch = extraMeta.steps_per_epoch ? Number(extraMeta.steps_per_epoch) : 0;
  return encodeSafetensors(
    tensors,
    {
      format: FORMAT,
      step: String(s.step),
      epoch: String(perEpoch ? Math.floor(s.step / perEpoch) : 0),
      seed: String(cfg.seed),
      model: JSON.stringify(cfg.model),
      sde: JSON.stringify(cfg.sde),
      train: JSON.stringify(cfg),
      rng: 'counter-based: Rng(seed, stream, step, index)',
      ...extraMeta,
    },
    { digest: true },
  );
}

export interface DecodedCheckpoint {
  config: TrainConfig;
  state: OptimState;
  /** The run id stamped into the file (undefined in files from before run ids). */
  run: string | undefined;
  digest: DigestStatus;
  metadata: Record<string, string>;
}

/** A full training state, from a file written by encodeCheckpoint. */
export function decodeCheckpoint(file: SafetensorsFile): DecodedCheckpoint {
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
  checkNames(file, infos, TRAIN_PREFIXES);
  const state: OptimState = {
    params: stateDictToFlat(file, infos, ''),
    ema: stateDictToFlat(file, infos, SLOTS.ema),
    m: stateDictToFlat(file, infos, SLOTS.m),
    v: stateDictToFlat(file, infos, SLOTS.v),
    step: Number(meta.step),
  };
  if (!Number.isSafeInteger(state.step) || state.step < 0) throw new Error(`${file.source}: bad step '${meta.step}' in __metadata__`);
  return { config, state, run: meta.run, digest: file.digest, metadata: meta };
}

export function loadCheckpointBytes(bytes: Uint8Array, label = '<state>'): DecodedCheckpoint {
  return decodeCheckpoint(decodeSafetensors(bytes, label));
}

export function loadTrainingCheckpoint(path: string): DecodedCheckpoint {
  return decodeCheckpoint(readSafetensors(path));
}

export interface CheckpointInfo {
  step: number;
  run: string | undefined;
  /** The state checksum the coordinator recorded for it ('' when none). */
  checksum: string;
  digest: DigestStatus;
  /** The training config as recorded (JSON), when the file has one. */
  configJson: string | undefined;
}

/**
 * What a training checkpoint held in memory says about itself, its digest checked, without
 * decoding the tensors. Undefined when the bytes are not a safetensors training checkpoint
 * (e.g. the synthetic objective's raw state); throws one line when it is one but corrupt.
 */
export function inspectCheckpoint(bytes: Uint8Array, source = '<state>'): CheckpointInfo | undefined {
  let meta: Record<string, string>;
  let digest: DigestStatus;
  try {
    ({ metadata: meta, digest } = inspectSafetensors(bytes, source));
  } catch (e) {
    // Not safetensors at all (no plausible header): not ours to judge. A bad digest is ours.
    if (e instanceof CorruptDataError) throw e;
    return undefined;
  }
  const step = Number(meta.step);
  if (meta.step === undefined || !Number.isSafeInteger(step) || step < 0) return undefined;
  return { step, run: meta.run, checksum: meta.checksum ?? '', digest, configJson: meta.train };
}
