/**
 * Sample-quality metrics for 28x28 digit samples, judged by an MNIST classifier
 * (./classifier.ts) against a reference set of real images:
 *
 *   fd             Fréchet distance between Gaussians fitted to the classifier's feature-layer
 *                  activations of the samples and of the reference (the MNIST analogue of FID;
 *                  lower is better, real data give a small floor that grows as n shrinks)
 *   confidence     mean over samples of the largest softmax probability (does it look like
 *                  some digit?)
 *   class_counts   how many samples the classifier assigns to each digit 0..9
 *   class_entropy  entropy (nats) of that assignment; ln 10 = 2.303 for balanced classes, lower
 *                  when the sampler drops or over-produces digits
 *   speckle        mean |x − median3x3(x)| over all pixels (salt-and-pepper energy; the 3x3
 *                  window repeats edge pixels, as scipy's median_filter(size=3) does)
 *   hist_tv        total-variation distance between the 10-bin pixel histograms on [0,1] of
 *                  the samples and of the reference
 *
 * Samples are clipped to [0,1] before every metric (samplers end slightly outside it); the
 * fraction of pixels that were outside is reported as `clipped_fraction`.
 */
import { IMAGE_SIZE, NUM_CLASSES, argmaxRow, type MnistClassifier } from './classifier.js';
import { featureStats, frechetParts, type GaussianStats } from './frechet.js';

export { featureStats, frechetDistance, frechetParts, type GaussianStats } from './frechet.js';

export const HIST_BINS = 10;

/** n 28x28 images, image-major (NCHW with C = 1, or NHW: the same bytes). */
export interface Images {
  n: number;
  data: Float32Array;
}

/** What a sample set is compared with; computed once per reference by `referenceStats`. */
export interface ReferenceStats {
  source: string;
  n: number;
  features: GaussianStats;
  /** HIST_BINS pixel frequencies summing to 1. */
  hist: Float64Array;
  speckle: number;
}

export interface SampleMetrics {
  n: number;
  fd: number;
  /** ||mu_s − mu_ref||², the part of fd due to the mean. */
  fd_mean: number;
  /** tr(S_s + S_ref − 2 (S_s S_ref)^{1/2}), the part due to the covariance. */
  fd_cov: number;
  confidence: number;
  class_counts: number[];
  class_entropy: number;
  speckle: number;
  hist_tv: number;
  /** Fraction of sample pixels outside [0,1] (clipped before every metric). */
  clipped_fraction: number;
  ref: string;
  ref_n: number;
  /** The reference images' own speckle, for scale. */
  ref_speckle: number;
}

const PIXELS = IMAGE_SIZE * IMAGE_SIZE;

function checkImages(images: Images, what: string): void {
  if (!Number.isSafeInteger(images.n) || images.n < 2) throw new Error(`${what}: need at least 2 images, got ${images.n}`);
  if (images.data.length !== images.n * PIXELS)
    throw new Error(`${what}: ${images.data.length} values is not n*28*28 with n = ${images.n}`);
}

/** Values clipped to [0,1] (NaN is rejected, not clipped), and how many were outside. */
export function clipUnit(data: Float32Array, what = 'images'): { data: Float32Array; clipped: number } {
  const out = new Float32Array(data.length);
  let clipped = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (Number.isNaN(v)) throw new Error(`${what}: value NaN at image ${Math.floor(i / PIXELS)}, pixel ${i % PIXELS}`);
    if (v < 0) {
      out[i] = 0;
      clipped++;
    } else if (v > 1) {
      out[i] = 1;
      clipped++;
    } else {
      out[i] = v;
    }
  }
  return { data: out, clipped };
}

/** Pixel frequencies in HIST_BINS equal bins on [0,1] (1 falls in the last bin), as np.histogram(x, 10, (0, 1)) / x.size. */
export function pixelHistogram(data: Float32Array): Float64Array {
  const h = new Float64Array(HIST_BINS);
  for (let i = 0; i < data.length; i++) h[Math.min(HIST_BINS - 1, Math.max(0, Math.floor(data[i] * HIST_BINS)))]++;
  for (let b = 0; b < HIST_BINS; b++) h[b] /= data.length;
  return h;
}

/** Total-variation distance ½ Σ |p − q| of two distributions. */
export function totalVariation(p: ArrayLike<number>, q: ArrayLike<number>): number {
  if (p.length !== q.length) throw new Error(`totalVariation: ${p.length} vs ${q.length} bins`);
  let s = 0;
  for (let i = 0; i < p.length; i++) s += Math.abs(p[i] - q[i]);
  return s / 2;
}

/** Mean |x − median3x3(x)| over every pixel of n h x w images (edge pixels repeated outside the image). */
export function speckle(data: Float32Array, n: number, h = IMAGE_SIZE, w = IMAGE_SIZE): number {
  if (data.length !== n * h * w || n < 1) throw new Error(`speckle: ${data.length} values is not n*h*w = ${n}*${h}*${w}`);
  const win = new Float64Array(9);
  let sum = 0;
  for (let k = 0; k < n; k++) {
    const base = k * h * w;
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        let m = 0;
        for (let di = -1; di <= 1; di++) {
          const r = Math.min(h - 1, Math.max(0, i + di));
          for (let dj = -1; dj <= 1; dj++) win[m++] = data[base + r * w + Math.min(w - 1, Math.max(0, j + dj))];
        }
        win.sort();
        sum += Math.abs(data[base + i * w + j] - win[4]);
      }
    }
  }
  return sum / data.length;
}

/** Entropy in nats of the distribution given by counts (0 ln 0 = 0). */
export function entropyOfCounts(counts: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < counts.length; i++) total += counts[i];
  let h = 0;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] > 0) {
      const p = counts[i] / total;
      h -= p * Math.log(p);
    }
  }
  return h;
}

/** Mean over rows of the largest softmax probability of 10 logits (computed in float64, max-shifted). */
export function meanConfidence(logits: Float32Array): number {
  const n = logits.length / NUM_CLASSES;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    let max = -Infinity;
    for (let k = 0; k < NUM_CLASSES; k++) max = Math.max(max, logits[i * NUM_CLASSES + k]);
    let z = 0;
    for (let k = 0; k < NUM_CLASSES; k++) z += Math.exp(logits[i * NUM_CLASSES + k] - max);
    sum += 1 / z; // exp(max - max) / z
  }
  return sum / n;
}

/** The reference's feature statistics, pixel histogram and speckle (images already in [0,1], or clipped here). */
export function referenceStats(
  classifier: MnistClassifier,
  images: Images,
  source = 'reference',
  opts: { batchSize?: number } = {},
): ReferenceStats {
  checkImages(images, source);
  const { data } = clipUnit(images.data, source);
  const out = classifier.run(data, images.n, opts);
  return {
    source,
    n: images.n,
    features: featureStats(out.features, images.n, classifier.featureDim),
    hist: pixelHistogram(data),
    speckle: speckle(data, images.n),
  };
}

/**
 * The metrics of `samples` (n 28x28 images, clipped to [0,1] first) against `reference` (a
 * ReferenceStats, or images to compute one from). `batchSize`: images per classifier batch.
 */
export function evaluateSamples(
  samples: Images,
  classifier: MnistClassifier,
  reference: ReferenceStats | (Images & { source?: string }),
  opts: { batchSize?: number } = {},
): SampleMetrics {
  checkImages(samples, 'samples');
  const ref = 'features' in reference ? reference : referenceStats(classifier, reference, reference.source, opts);
  const { data, clipped } = clipUnit(samples.data, 'samples');
  const out = classifier.run(data, samples.n, opts);
  const stats = featureStats(out.features, samples.n, classifier.featureDim);
  const fd = frechetParts(stats, ref.features);
  const counts = new Array<number>(NUM_CLASSES).fill(0);
  for (let i = 0; i < samples.n; i++) counts[argmaxRow(out.logits, i)]++;
  return {
    n: samples.n,
    fd: fd.fd,
    fd_mean: fd.meanTerm,
    fd_cov: fd.covTerm,
    confidence: meanConfidence(out.logits),
    class_counts: counts,
    class_entropy: entropyOfCounts(counts),
    speckle: speckle(data, samples.n),
    hist_tv: totalVariation(pixelHistogram(data), ref.hist),
    clipped_fraction: clipped / data.length,
    ref: ref.source,
    ref_n: ref.n,
    ref_speckle: ref.speckle,
  };
}
