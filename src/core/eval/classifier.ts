/**
 * A small MNIST CNN classifier, the feature extractor of the sample-quality metrics (the MNIST
 * analogue of FID's Inception network), written once against the tfjs API:
 *
 *   x [N,28,28,1] -> conv 3x3 (c1, same) -> relu -> maxpool 2x2
 *                 -> conv 3x3 (c2, same) -> relu -> maxpool 2x2 -> flatten
 *                 -> dense (hidden) -> relu            (the features)
 *                 -> dense 10                          (the logits)
 *
 * Max pooling is a reshape to [N,H/2,2,W/2,2,C] and a max over the two window axes, so it runs on
 * every backend (the libtorch one has no MaxPool kernel). Training is plain Adam on flat float32
 * parameters (../train/adam.ts, the score model's optimiser), with gradients from tf.grads; the
 * initialisation and the batch order come from counter-based streams of (seed), so a run is
 * deterministic given the seed and the backend.
 *
 * Weights are saved as safetensors in tfjs layouts (conv [kh,kw,in,out], dense [in,out]) with
 * the architecture, the seed and the measured test accuracy in `__metadata__`.
 */
import * as tf from '@tensorflow/tfjs';
import { writeSafetensors, readSafetensors, getFloat32, type SafetensorsFile } from '../io/safetensors.js';
import { adamStep, newOptimState } from '../train/adam.js';
import type { NativeAdam } from '../backend/native-adam.js';
import { readInto } from '../backend/index.js';
import { Rng, Stream } from '../rng.js';

export const CLASSIFIER_FORMAT = 'scoreflow/1 MNIST classifier, tfjs layouts, float32';
export const NUM_CLASSES = 10;
/** Images are 28x28 (two 2x2 poolings leave 7x7). */
export const IMAGE_SIZE = 28;

/** A second stream key beside Stream.Init / Stream.Shuffle, so the classifier never shares the ScoreNet's streams. */
const CLASSIFIER_KEY = 0xc1a5;

export interface ClassifierConfig {
  /** Output channels of the two convolutions. */
  channels: [number, number];
  /** Width of the feature layer. */
  hidden: number;
}

export const CLASSIFIER_DEFAULTS: ClassifierConfig = { channels: [32, 64], hidden: 128 };

/** How `trainClassifier` trains unless told otherwise (`scoreflow classifier`'s help reads these). */
export const CLASSIFIER_TRAIN_DEFAULTS = { seed: 0, batchSize: 64, epochs: 2, lr: 1e-3 };

export interface ClassifierParam {
  name: string;
  shape: number[];
  offset: number;
  size: number;
  /** PyTorch's default init bound, U(+-1/sqrt(fan_in)). */
  bound: number;
}

export function checkClassifierConfig(cfg: ClassifierConfig, where = 'classifier'): ClassifierConfig {
  const ok = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 1 && (v as number) <= 4096;
  if (!Array.isArray(cfg.channels) || cfg.channels.length !== 2 || !cfg.channels.every(ok) || !ok(cfg.hidden)) {
    throw new Error(`${where}: bad classifier config ${JSON.stringify(cfg)} (want channels [c1,c2] and hidden, integers in 1..4096)`);
  }
  return { channels: [cfg.channels[0], cfg.channels[1]], hidden: cfg.hidden };
}

/** Every parameter in order, with its place in the flat vector. */
export function classifierParams(cfg: ClassifierConfig): ClassifierParam[] {
  const [c1, c2] = cfg.channels;
  const flat = (IMAGE_SIZE / 4) * (IMAGE_SIZE / 4) * c2;
  const out: ClassifierParam[] = [];
  let offset = 0;
  const add = (name: string, shape: number[], fanIn: number) => {
    const size = shape.reduce((a, b) => a * b, 1);
    out.push({ name, shape, offset, size, bound: 1 / Math.sqrt(fanIn) });
    offset += size;
  };
  add('conv1.weight', [3, 3, 1, c1], 9);
  add('conv1.bias', [c1], 9);
  add('conv2.weight', [3, 3, c1, c2], 9 * c1);
  add('conv2.bias', [c2], 9 * c1);
  add('fc1.weight', [flat, cfg.hidden], flat);
  add('fc1.bias', [cfg.hidden], flat);
  add('fc2.weight', [cfg.hidden, NUM_CLASSES], cfg.hidden);
  add('fc2.bias', [NUM_CLASSES], cfg.hidden);
  return out;
}

function numParams(infos: ClassifierParam[]): number {
  const last = infos[infos.length - 1];
  return last.offset + last.size;
}

/** Fresh parameters, U(+-1/sqrt(fan_in)) as PyTorch initialises conv and linear layers, from (seed). */
export function initClassifierParams(cfg: ClassifierConfig, seed: number): Float32Array {
  const infos = classifierParams(cfg);
  const flat = new Float32Array(numParams(infos));
  infos.forEach((info, i) => {
    const rng = new Rng(seed, Stream.Init, CLASSIFIER_KEY, i);
    for (let j = 0; j < info.size; j++) flat[info.offset + j] = (2 * rng.uniform() - 1) * info.bound;
  });
  return flat;
}

type Params = Record<string, tf.Tensor>;

/** 2x2 max pooling, stride 2, of an NHWC tensor with even H and W. */
function maxPool2(x: tf.Tensor4D): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  return tf.max(tf.reshape(x, [n, h / 2, 2, w / 2, 2, c]), [2, 4]) as tf.Tensor4D;
}

function forward(p: Params, x: tf.Tensor4D): { features: tf.Tensor2D; logits: tf.Tensor2D } {
  let h = tf.relu(tf.add(tf.conv2d(x, p['conv1.weight'] as tf.Tensor4D, 1, 'same'), p['conv1.bias'])) as tf.Tensor4D;
  h = maxPool2(h);
  h = tf.relu(tf.add(tf.conv2d(h, p['conv2.weight'] as tf.Tensor4D, 1, 'same'), p['conv2.bias'])) as tf.Tensor4D;
  h = maxPool2(h);
  const flat = tf.reshape(h, [h.shape[0], -1]) as tf.Tensor2D;
  const features = tf.relu(tf.add(tf.matMul(flat, p['fc1.weight'] as tf.Tensor2D), p['fc1.bias'])) as tf.Tensor2D;
  const logits = tf.add(tf.matMul(features, p['fc2.weight'] as tf.Tensor2D), p['fc2.bias']) as tf.Tensor2D;
  return { features, logits };
}

function upload(infos: ClassifierParam[], flat: Float32Array): Params {
  const p: Params = {};
  for (const info of infos) p[info.name] = tf.tensor(flat.subarray(info.offset, info.offset + info.size), info.shape, 'float32');
  return p;
}

export interface ClassifierOutputs {
  n: number;
  /** n rows of `hidden` post-ReLU features. */
  features: Float32Array;
  /** n rows of 10 logits. */
  logits: Float32Array;
}

/** The classifier with its weights on the active backend; call dispose() when done. */
export class MnistClassifier {
  readonly infos: ClassifierParam[];
  private p: Params;

  constructor(
    readonly config: ClassifierConfig,
    readonly params: Float32Array,
    /** The safetensors metadata it was loaded with (or trained with). */
    readonly metadata: Record<string, string> = {},
  ) {
    checkClassifierConfig(config);
    this.infos = classifierParams(config);
    if (params.length !== numParams(this.infos))
      throw new Error(`classifier: ${params.length} parameters, the architecture has ${numParams(this.infos)}`);
    this.p = tf.tidy(() => upload(this.infos, params));
  }

  get featureDim(): number {
    return this.config.hidden;
  }

  /**
   * Features and logits of n 28x28 images (n*784 values, image-major, taken as they are: clip
   * first if they may leave [0,1]), in batches of `batchSize`.
   */
  run(images: Float32Array, n: number, opts: { batchSize?: number } = {}): ClassifierOutputs {
    const d = IMAGE_SIZE * IMAGE_SIZE;
    if (!Number.isSafeInteger(n) || n < 0 || images.length !== n * d)
      throw new Error(`classifier: ${images.length} values is not n*28*28 with n = ${n}`);
    const bs = opts.batchSize ?? 500;
    const features = new Float32Array(n * this.config.hidden);
    const logits = new Float32Array(n * NUM_CLASSES);
    for (let i = 0; i < n; i += bs) {
      const m = Math.min(bs, n - i);
      const [f, l] = tf.tidy(() => {
        const x = tf.tensor4d(images.subarray(i * d, (i + m) * d), [m, IMAGE_SIZE, IMAGE_SIZE, 1]);
        const out = forward(this.p, x);
        return [out.features, out.logits];
      });
      features.set(f.dataSync() as Float32Array, i * this.config.hidden);
      logits.set(l.dataSync() as Float32Array, i * NUM_CLASSES);
      f.dispose();
      l.dispose();
    }
    return { n, features, logits };
  }

  dispose(): void {
    Object.values(this.p).forEach((t) => t.dispose());
    this.p = {};
  }
}

/** Index of the largest of the 10 logits of row i. */
export function argmaxRow(logits: Float32Array, i: number): number {
  let best = 0;
  for (let k = 1; k < NUM_CLASSES; k++) if (logits[i * NUM_CLASSES + k] > logits[i * NUM_CLASSES + best]) best = k;
  return best;
}

/** Fraction of rows whose argmax is the label. */
export function accuracy(logits: Float32Array, labels: Uint8Array): number {
  const n = logits.length / NUM_CLASSES;
  if (labels.length !== n) throw new Error(`accuracy: ${n} rows of logits, ${labels.length} labels`);
  let right = 0;
  for (let i = 0; i < n; i++) if (argmaxRow(logits, i) === labels[i]) right++;
  return n === 0 ? NaN : right / n;
}

export interface TrainClassifierOptions {
  config?: ClassifierConfig;
  seed?: number;
  /** Passes over the data (ignored when `steps` is given). */
  epochs?: number;
  /** Exactly this many updates instead of whole epochs (the order keeps reshuffling per epoch). */
  steps?: number;
  batchSize?: number;
  /** Initial Adam learning rate (cosine-decayed to 0 over the run). */
  lr?: number;
  /** The update's engine (native-adam.ts nativeAdamFor(backend)); default: the JavaScript loop. */
  nativeAdam?: NativeAdam;
  /** After each update: updates done, their total, and the batch's mean loss. */
  onStep?: (done: number, total: number, loss: number) => void;
}

export interface TrainedClassifier {
  config: ClassifierConfig;
  params: Float32Array;
  steps: number;
  /** Mean cross-entropy of the last 50 batches. */
  finalLoss: number;
}

/**
 * Train on n images (n*784 values in [0,1]) with labels 0..9: Adam with a cosine decay of the
 * learning rate from `lr` to 0, cross-entropy, batches in a fresh permutation of the data each
 * epoch (Rng(seed, Shuffle, ..., epoch)); the last, partial batch of an epoch is kept.
 */
export function trainClassifier(images: Float32Array, labels: Uint8Array, opts: TrainClassifierOptions = {}): TrainedClassifier {
  const config = checkClassifierConfig(opts.config ?? CLASSIFIER_DEFAULTS);
  const seed = opts.seed ?? CLASSIFIER_TRAIN_DEFAULTS.seed;
  const bs = opts.batchSize ?? CLASSIFIER_TRAIN_DEFAULTS.batchSize;
  const d = IMAGE_SIZE * IMAGE_SIZE;
  const n = labels.length;
  if (images.length !== n * d) throw new Error(`trainClassifier: ${images.length} pixel values for ${n} labels of 28x28 images`);
  if (n === 0) throw new Error('trainClassifier: no training images');
  const bad = labels.findIndex((l) => l >= NUM_CLASSES);
  if (bad >= 0) throw new Error(`trainClassifier: label ${labels[bad]} at ${bad} is not a digit 0..9`);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`trainClassifier: seed must be a non-negative integer, got ${seed}`);
  if (!Number.isSafeInteger(bs) || bs < 1) throw new Error(`trainClassifier: batch size must be a positive integer, got ${bs}`);
  const perEpoch = Math.ceil(n / bs);
  const total = opts.steps ?? perEpoch * (opts.epochs ?? CLASSIFIER_TRAIN_DEFAULTS.epochs);
  if (!Number.isSafeInteger(total) || total < 1) throw new Error(`trainClassifier: need at least one step, got ${total}`);

  const infos = classifierParams(config);
  const state = newOptimState(initClassifierParams(config, seed));
  const baseLr = opts.lr ?? CLASSIFIER_TRAIN_DEFAULTS.lr;
  const adam = { lr: baseLr, beta1: 0.9, beta2: 0.999, adamEps: 1e-8, emaDecay: 0, gradClip: 0 };
  const grad = new Float32Array(state.params.length);
  const xBatch = new Float32Array(bs * d);
  const yBatch = new Int32Array(bs);
  const losses: number[] = [];
  let order: Uint32Array = new Uint32Array(0);
  for (let step = 0; step < total; step++) {
    const epoch = Math.floor(step / perEpoch);
    const b = step % perEpoch;
    if (b === 0) order = new Rng(seed, Stream.Shuffle, CLASSIFIER_KEY, epoch).permutation(n);
    const m = Math.min(bs, n - b * bs);
    for (let j = 0; j < m; j++) {
      const k = order[b * bs + j];
      xBatch.set(images.subarray(k * d, (k + 1) * d), j * d);
      yBatch[j] = labels[k];
    }
    const { loss, grads } = tf.tidy(() => {
      const p = upload(infos, state.params);
      const names = infos.map((i) => i.name);
      const x = tf.tensor4d(xBatch.subarray(0, m * d), [m, IMAGE_SIZE, IMAGE_SIZE, 1]);
      const onehot = tf.oneHot(tf.tensor1d(yBatch.subarray(0, m), 'int32'), NUM_CLASSES);
      const lossFn = (...ts: tf.Tensor[]) => {
        const q: Params = {};
        names.forEach((name, i) => (q[name] = ts[i]));
        const { logits } = forward(q, x);
        // mean over the batch of logsumexp(z) - z_label
        return tf.mean(tf.sub(tf.logSumExp(logits, 1), tf.sum(tf.mul(logits, onehot), 1))) as tf.Scalar;
      };
      const { value, grads } = tf.valueAndGrads(lossFn)(names.map((name) => p[name]));
      return { loss: value, grads };
    });
    infos.forEach((info, i) => readInto(grads[i], grad.subarray(info.offset, info.offset + info.size)));
    const lossValue = loss.dataSync()[0];
    tf.dispose([loss, ...grads]);
    if (!Number.isFinite(lossValue)) throw new Error(`trainClassifier: loss is ${lossValue} at step ${step}`);
    // cosine decay of the learning rate from lr to 0 over the run
    adam.lr = baseLr * 0.5 * (1 + Math.cos((Math.PI * step) / total));
    adamStep(state, grad, adam, opts.nativeAdam);
    losses.push(lossValue);
    if (losses.length > 50) losses.shift();
    opts.onStep?.(step + 1, total, lossValue);
  }
  return { config, params: state.params, steps: total, finalLoss: losses.reduce((a, b) => a + b, 0) / losses.length };
}

/** Save as safetensors (atomically), with the architecture and `meta` in __metadata__. */
export async function saveClassifier(
  path: string,
  config: ClassifierConfig,
  params: Float32Array,
  meta: Record<string, string> = {},
): Promise<void> {
  const infos = classifierParams(checkClassifierConfig(config));
  if (params.length !== numParams(infos))
    throw new Error(`saveClassifier: ${params.length} parameters, the architecture has ${numParams(infos)}`);
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const info of infos) tensors[info.name] = { shape: info.shape, data: params.slice(info.offset, info.offset + info.size) };
  await writeSafetensors(path, tensors, { ...meta, format: CLASSIFIER_FORMAT, config: JSON.stringify(config) }, { digest: true });
}

/** The architecture and flat parameters of a classifier file, checked (format, shapes, no extra tensors, finite). */
export function decodeClassifier(file: SafetensorsFile): { config: ClassifierConfig; params: Float32Array } {
  const src = file.source;
  if (file.metadata.format !== CLASSIFIER_FORMAT) {
    const what = file.metadata.format ? `format '${file.metadata.format}'` : 'no format in __metadata__';
    throw new Error(`${src}: not a scoreflow MNIST classifier (${what}); make one with 'scoreflow classifier'`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(file.metadata.config ?? '');
  } catch {
    throw new Error(`${src}: bad classifier config in __metadata__: ${JSON.stringify(file.metadata.config ?? null)}`);
  }
  const config = checkClassifierConfig(raw as ClassifierConfig, src);
  const infos = classifierParams(config);
  const known = new Set(infos.map((i) => i.name));
  for (const name of file.tensors.keys())
    if (!known.has(name)) throw new Error(`${src}: unexpected tensor '${name}' (not a classifier parameter)`);
  const params = new Float32Array(numParams(infos));
  for (const info of infos) params.set(getFloat32(file, info.name, info.shape), info.offset);
  return { config, params };
}

/** Load a classifier file onto the active backend. */
export function loadClassifier(path: string): MnistClassifier {
  const file = readSafetensors(path);
  const { config, params } = decodeClassifier(file);
  return new MnistClassifier(config, params, file.metadata);
}
