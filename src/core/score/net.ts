/** A ScoreNet checkpoint as a ScoreModel for the samplers and the likelihood. */
import * as tf from '@tensorflow/tfjs';
import type { ModelConfig } from '../model/config.js';
import { ScoreNet, type ParamTensors } from '../model/scorenet.js';
import { makeSde, type SdeConfig } from '../sde.js';
import { getFloat32, readSafetensors } from '../io/safetensors.js';
import { fromTorchLayout, numParams, paramInfos } from '../model/params.js';
import { inferModelConfig, loadWeights } from '../model/weights.js';
import type { ScoreModel } from './batch.js';

export interface NetScoreModel extends ScoreModel {
  net: ScoreNet;
  /** Which weights: the EMA of a training checkpoint, or raw parameters. */
  which: 'ema' | 'raw';
  step: number | null;
  /** Loaded from a scoreflow file without a data digest (see LoadedWeights.unverified). */
  unverified: boolean;
  /** Frees the parameter tensors. */
  dispose(): void;
}

/** Wrap flat parameters (our layout) of a ScoreNet; uploads them once. */
export function netScoreModel(
  model: ModelConfig,
  sde: SdeConfig,
  params: Float32Array,
  meta: { which?: 'ema' | 'raw'; step?: number | null; unverified?: boolean } = {},
): NetScoreModel {
  const net = new ScoreNet(model, makeSde(sde));
  const p: ParamTensors = tf.tidy(() => net.tensors(params));
  return {
    net,
    sde: net.sde,
    shape: [model.height, model.width, 1],
    score: (x, t) => net.apply(p, x, t),
    which: meta.which ?? 'raw',
    step: meta.step ?? null,
    unverified: meta.unverified ?? false,
    dispose: () => Object.values(p).forEach((v) => v.dispose()),
  };
}

/** Load --ckpt (training checkpoint, EMA by default, or a bare PyTorch state_dict). */
export function loadScoreModel(path: string, opts: { ema?: boolean } = {}): NetScoreModel {
  const w = loadWeights(path, opts);
  return netScoreModel(w.model, w.sde, w.params, { which: w.which, step: w.step, unverified: w.unverified });
}

/**
 * The ScoreNet parameters of any safetensors file holding a PyTorch state_dict among other
 * tensors (e.g. the parity fixture, which also carries input./output./grad. tensors that
 * loadWeights rejects). Extra tensors are ignored; the VE SDE takes sigma_min/sigma_max from
 * the metadata when present.
 */
export function scoreModelFromStateDict(path: string): NetScoreModel {
  const file = readSafetensors(path);
  const model = inferModelConfig(file);
  const infos = paramInfos(model);
  const flat = new Float32Array(numParams(infos));
  for (const info of infos) flat.set(fromTorchLayout(info, getFloat32(file, info.name, info.torchShape)), info.offset);
  const meta = file.metadata;
  const sde: SdeConfig = meta.sde
    ? (JSON.parse(meta.sde) as SdeConfig)
    : {
        name: 've',
        sigmaMin: meta.sigma_min ? Number(meta.sigma_min) : undefined,
        sigmaMax: meta.sigma_max ? Number(meta.sigma_max) : undefined,
      };
  return netScoreModel(model, sde, flat);
}
