/**
 * Sample-quality metrics: the Fréchet distance against closed forms and scipy, the MNIST
 * classifier (trained briefly on the torch backend, one thread), the metrics on real digits vs
 * noise and blanks, weights round trip, and `scoreflow classifier` / `scoreflow evaluate` end
 * to end with bad input as one line, a non-zero exit and nothing written.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { initBackend } from '../src/core/backend/index.js';
import { loadImages, loadLabels } from '../src/core/data/mnist.js';
import {
  CLASSIFIER_FORMAT,
  MnistClassifier,
  accuracy,
  initClassifierParams,
  loadClassifier,
  saveClassifier,
  trainClassifier,
  type ClassifierConfig,
} from '../src/core/eval/classifier.js';
import { featureStats, frechetDistance, frechetParts, type GaussianStats } from '../src/core/eval/frechet.js';
import { entropyOfCounts, evaluateSamples, pixelHistogram, referenceStats, speckle, totalVariation } from '../src/core/eval/index.js';
import { writeNpySync } from '../src/core/io/npy.js';
import { writeSafetensorsSync } from '../src/core/io/safetensors.js';
import { Rng, Stream } from '../src/core/rng.js';
import { errorLines, runBin, tempDir } from './helpers/cli.js';

const dir = tempDir('scoreflow-eval-');
after(() => rmSync(dir, { recursive: true, force: true }));

/** Small enough to train in seconds on one thread, good enough to tell digits from noise. */
const SMALL: ClassifierConfig = { channels: [8, 16], hidden: 32 };
const BACKEND = ['--backend', 'torch', '--threads', '1'];

function gaussian(mu: number[], sigma: number[][]): GaussianStats {
  return { n: 0, d: mu.length, mu: Float64Array.from(mu), sigma: Float64Array.from(sigma.flat()) };
}

function diag(v: number[]): number[][] {
  return v.map((x, i) => v.map((_, j) => (i === j ? x : 0)));
}

/** n rows of d correlated features: z A + b with z standard normal. */
function correlatedRows(seed: number, n: number, d: number, shift = 0): Float64Array {
  const rng = new Rng(seed, Stream.Test, 1);
  const a = Array.from({ length: d * d }, () => rng.uniform() * 2 - 1);
  const z = rng.fillNormal(new Float64Array(n * d));
  const out = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) {
      let s = shift * (j + 1);
      for (let k = 0; k < d; k++) s += z[i * d + k] * a[k * d + j];
      out[i * d + j] = s;
    }
  }
  return out;
}

describe('Fréchet distance', () => {
  test('identical sets give ~0; a shifted copy gives exactly the squared shift', () => {
    const rows = correlatedRows(1, 300, 6);
    const s = featureStats(rows, 300, 6);
    assert.ok(Math.abs(frechetDistance(s, s)) < 1e-9, `${frechetDistance(s, s)}`);
    const shifted = rows.map((v, i) => v + (i % 6 === 2 ? 0.5 : 0));
    const p = frechetParts(s, featureStats(shifted, 300, 6));
    assert.ok(Math.abs(p.meanTerm - 0.25) < 1e-12, `${p.meanTerm}`);
    assert.ok(Math.abs(p.covTerm) < 1e-9, `${p.covTerm}`);
  });

  test('diagonal Gaussians: ||dmu||² + Σ (σ1 − σ2)²', () => {
    const s1 = [0.5, 1, 2, 3.5];
    const s2 = [1.5, 1, 0.25, 3];
    const fd = frechetDistance(gaussian([0, 1, 2, 3], diag(s1.map((x) => x * x))), gaussian([1, 1, 0, 3], diag(s2.map((x) => x * x))));
    const expect = 1 + 4 + s1.reduce((acc, x, i) => acc + (x - s2[i]) ** 2, 0);
    assert.ok(Math.abs(fd - expect) < 1e-10, `${fd} vs ${expect}`);
  });

  test('2x2 by hand: S1 = I, S2 = [[2,1],[1,2]] gives 4 − 2√3; rank-deficient covariances stay exact', () => {
    // (S1 S2)^{1/2} = S2^{1/2} has eigenvalues √3 and 1: tr(I) + tr(S2) − 2(√3 + 1) = 4 − 2√3
    const fd = frechetDistance(
      gaussian(
        [0, 0],
        [
          [1, 0],
          [0, 1],
        ],
      ),
      gaussian(
        [0, 0],
        [
          [2, 1],
          [1, 2],
        ],
      ),
    );
    assert.ok(Math.abs(fd - (4 - 2 * Math.sqrt(3))) < 1e-12, `${fd}`);
    // singular and orthogonal: S1 S2 = 0, so the distance is tr S1 + tr S2
    assert.ok(
      Math.abs(
        frechetDistance(
          gaussian(
            [0, 0],
            [
              [1, 0],
              [0, 0],
            ],
          ),
          gaussian(
            [0, 0],
            [
              [0, 0],
              [0, 4],
            ],
          ),
        ) - 5,
      ) < 1e-12,
    );
    // a rank-1 covariance against itself: 0, not NaN from the negative round-off eigenvalue
    const r1 = gaussian(
      [1, 2, 3],
      [
        [1, 2, 3],
        [2, 4, 6],
        [3, 6, 9],
      ],
    );
    assert.ok(Math.abs(frechetDistance(r1, r1)) < 1e-7, `${frechetDistance(r1, r1)}`);
  });

  test('non-diagonal case and the statistics match numpy / scipy.linalg.sqrtm', () => {
    const n = 40;
    const d = 5;
    const a = correlatedRows(2, n, d);
    const b = correlatedRows(3, n, d, 0.3);
    const sa = featureStats(a, n, d);
    const sb = featureStats(b, n, d);
    const py = [
      'import sys, json, numpy as np, scipy.linalg',
      'j = json.load(sys.stdin); d = j["d"]',
      'a = np.array(j["a"]).reshape(-1, d); b = np.array(j["b"]).reshape(-1, d)',
      'ma, mb = a.mean(0), b.mean(0); ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)',
      'covmean = scipy.linalg.sqrtm(ca @ cb).real',
      'fd = float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * covmean))',
      'print(json.dumps({"fd": fd, "mu": ma.tolist(), "cov": ca.ravel().tolist()}))',
    ].join('\n');
    const r = spawnSync('/usr/bin/python3', ['-c', py], {
      input: JSON.stringify({ d, a: Array.from(a), b: Array.from(b) }),
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, `/usr/bin/python3 with numpy and scipy failed: ${r.stderr || r.error}`);
    const ref = JSON.parse(r.stdout) as { fd: number; mu: number[]; cov: number[] };
    ref.mu.forEach((m, j) => assert.ok(Math.abs(sa.mu[j] - m) < 1e-12));
    ref.cov.forEach((c, j) => assert.ok(Math.abs(sa.sigma[j] - c) < 1e-12));
    const fd = frechetDistance(sa, sb);
    assert.ok(fd > 1, `${fd}`); // a real difference, not a degenerate case
    assert.ok(Math.abs(fd - ref.fd) < 1e-9 * Math.max(1, ref.fd), `${fd} vs scipy ${ref.fd}`);
    // symmetric in its arguments
    assert.ok(Math.abs(frechetDistance(sb, sa) - fd) < 1e-9 * fd);
  });

  test('bad input is refused', () => {
    assert.throws(() => featureStats(new Float64Array(6), 3, 3), /6 values is not n\*d = 3\*3/);
    assert.throws(() => featureStats(new Float64Array(3), 1, 3), /at least 2 rows/);
    assert.throws(() => frechetDistance(gaussian([0], [[1]]), gaussian([0, 0], diag([1, 1]))), /dimensions differ/);
  });
});

test('loadLabels: the label file beside a data set, or a path; one-line errors', () => {
  const all = loadLabels('test');
  assert.equal(all.n, 10000);
  assert.deepEqual(Array.from(loadLabels('test', { limit: 5 }).labels), [7, 2, 1, 0, 4]); // MNIST's first test digits
  assert.deepEqual(loadLabels(all.source, { limit: 5 }).labels, all.labels.subarray(0, 5));
  assert.throws(() => loadLabels('test', { limit: 0 }), /loadLabels: limit must be a positive integer/);
  assert.throws(() => loadLabels(join(dir, 'none.idx')), /none\.idx: no such file, and not a data set name/);
  assert.throws(() => loadLabels(loadImages('test', { limit: 1 }).source), /magic number 2051 .* is not 2049, an IDX label file/);
});

describe('pixel proxies', () => {
  test('speckle of one isolated pixel; histogram bins; TV; entropy', () => {
    const img = new Float32Array(784);
    img[14 * 28 + 14] = 1; // its 3x3 median is 0, its neighbours' medians are 0 too
    assert.ok(Math.abs(speckle(img, 1) - 1 / 784) < 1e-15);
    const corner = new Float32Array(784).fill(1);
    corner[0] = 0; // edge pixels repeat: the corner's window holds four 0s and five 1s
    assert.ok(Math.abs(speckle(corner, 1) - 1 / 784) < 1e-15);
    assert.deepEqual(
      Array.from(pixelHistogram(Float32Array.from([0, 0.05, 0.1, 0.55, 0.999, 1]))).map((p) => p * 6),
      [2, 1, 0, 0, 0, 1, 0, 0, 0, 2],
    );
    assert.equal(totalVariation([1, 0], [0, 1]), 1);
    assert.ok(Math.abs(totalVariation([0.5, 0.5], [0.25, 0.75]) - 0.25) < 1e-15);
    assert.ok(Math.abs(entropyOfCounts([5, 5, 5, 5, 5, 5, 5, 5, 5, 5]) - Math.log(10)) < 1e-12);
    assert.equal(entropyOfCounts([0, 7, 0]), 0);
  });
});

describe('classifier and metrics', () => {
  let trained: { config: ClassifierConfig; params: Float32Array };
  let clf: MnistClassifier;
  const weights = join(dir, 'small.safetensors');
  const testSet = loadImages('test', { limit: 1000 });
  const labels500 = loadLabels('test', { limit: 500 }).labels;
  const images = (from: number, to: number) => ({ n: to - from, data: testSet.data.subarray(from * 784, to * 784) });

  before(async () => {
    await initBackend('torch', { threads: 1, log: () => {} });
    const train = loadImages('train', { limit: 1500 });
    const trainLabels = loadLabels('train', { limit: 1500 });
    assert.equal(trainLabels.n, 1500);
    trained = trainClassifier(train.data, trainLabels.labels, { config: SMALL, steps: 300, batchSize: 50, seed: 0 });
    clf = new MnistClassifier(trained.config, trained.params);
    await saveClassifier(weights, trained.config, trained.params, { note: 'test' });
  });
  after(() => clf?.dispose());

  test('a briefly trained classifier beats 85% on 500 test images', () => {
    const acc = accuracy(clf.run(images(0, 500).data, 500).logits, labels500);
    assert.ok(acc > 0.85, `accuracy ${acc}`);
  });

  test('training is deterministic given the seed, and the seed matters', () => {
    const train = loadImages('train', { limit: 100 });
    const lab = loadLabels('train', { limit: 100 }).labels;
    const run = (seed: number) => trainClassifier(train.data, lab, { config: SMALL, steps: 3, batchSize: 32, seed }).params;
    assert.deepEqual(run(4), run(4));
    assert.notDeepEqual(run(4), run(5));
    assert.notDeepEqual(initClassifierParams(SMALL, 4), initClassifierParams(SMALL, 5));
    assert.throws(
      () =>
        trainClassifier(
          train.data,
          Uint8Array.from(lab, () => 10),
          { steps: 1 },
        ),
      /label 10 at 0 is not a digit/,
    );
  });

  test('save/load round trip: identical logits and features, metadata kept', () => {
    const loaded = loadClassifier(weights);
    try {
      const x = images(0, 64).data;
      const a = clf.run(x, 64);
      const b = loaded.run(x, 64);
      assert.deepEqual(b.logits, a.logits);
      assert.deepEqual(b.features, a.features);
      // batching changes libtorch's summation order, not the values beyond round-off
      const c = loaded.run(x, 64, { batchSize: 17 });
      c.logits.forEach((v, i) =>
        assert.ok(Math.abs(v - a.logits[i]) < 1e-4 * (1 + Math.abs(a.logits[i])), `logit ${i}: ${v} vs ${a.logits[i]}`),
      );
      assert.deepEqual(loaded.config, SMALL);
      assert.equal(loaded.metadata.format, CLASSIFIER_FORMAT);
      assert.equal(loaded.metadata.note, 'test');
    } finally {
      loaded.dispose();
    }
  });

  test('real digits: far smaller fd and higher confidence than uniform noise or blank images', () => {
    const ref = referenceStats(clf, images(0, 500), 'test[0:500]');
    const real = evaluateSamples(images(500, 1000), clf, ref);
    const rng = new Rng(0, Stream.Test, 2);
    const noise = evaluateSamples({ n: 200, data: rng.uniformArray(200 * 784) }, clf, ref);
    // blank, and slightly outside [0,1] the way samplers end: clipped to 0
    const blank = evaluateSamples({ n: 200, data: new Float32Array(200 * 784).fill(-0.01) }, clf, ref);
    assert.ok(real.fd * 10 < noise.fd && real.fd * 10 < blank.fd, `fd real ${real.fd}, noise ${noise.fd}, blank ${blank.fd}`);
    // ReLU nets are confidently wrong far from the data (uniform noise all lands in one or two
    // classes): confidence alone ranks it only just below digits; the class entropy exposes it
    assert.ok(real.confidence > noise.confidence, `confidence real ${real.confidence}, noise ${noise.confidence}`);
    assert.ok(real.confidence > 0.7, `${real.confidence}`);
    assert.ok(noise.class_entropy < 1, `${noise.class_entropy}`);
    // noise the way a broken sampler leaves it (Gaussian around a dark background, clipped)
    const grey = evaluateSamples({ n: 200, data: rng.normal(200 * 784).map((v) => 0.1 + 0.3 * v) }, clf, ref);
    assert.ok(real.confidence > grey.confidence + 0.1, `confidence real ${real.confidence}, grey noise ${grey.confidence}`);
    assert.ok(real.fd * 10 < grey.fd, `fd real ${real.fd}, grey noise ${grey.fd}`);
    assert.ok(grey.clipped_fraction > 0.3);
    assert.equal(
      real.class_counts.reduce((a, b) => a + b, 0),
      500,
    );
    assert.ok(real.class_entropy > 2.15 && real.class_entropy <= Math.log(10) + 1e-12, `${real.class_entropy}`);
    assert.equal(blank.class_entropy, 0); // every blank image gets the same class
    assert.ok(real.speckle > 0.01 && real.speckle < 0.02, `${real.speckle}`);
    assert.ok(noise.speckle > 0.15, `${noise.speckle}`);
    assert.ok(real.hist_tv < 0.02 && noise.hist_tv > 0.5, `histTV real ${real.hist_tv}, noise ${noise.hist_tv}`);
    assert.equal(blank.speckle, 0);
    assert.equal(blank.clipped_fraction, 1);
    assert.equal(real.clipped_fraction, 0);
    assert.ok(Math.abs(real.fd - (real.fd_mean + real.fd_cov)) < 1e-9 * Math.max(1, real.fd));
    // a JSON-able report: survives a round trip unchanged
    assert.deepEqual(JSON.parse(JSON.stringify(real)), real);
    // the reference may be given as images
    assert.equal(evaluateSamples(images(500, 1000), clf, { ...images(0, 500), source: 'test[0:500]' }).fd, real.fd);
    assert.throws(() => evaluateSamples({ n: 1, data: new Float32Array(784) }, clf, ref), /at least 2 images/);
    assert.throws(() => evaluateSamples({ n: 2, data: new Float32Array(784 * 2).fill(NaN) }, clf, ref), /NaN at image 0, pixel 0/);
  });

  describe('CLI', () => {
    const sampleA = join(dir, 'real.npy');
    const sampleB = join(dir, 'noise.npy');
    before(() => {
      writeNpySync(sampleA, { shape: [100, 1, 28, 28], data: testSet.data.slice(500 * 784, 600 * 784) });
      writeNpySync(sampleB, { shape: [50, 28, 28], data: new Rng(1, Stream.Test, 3).uniformArray(50 * 784, -0.1, 1.1) });
    });

    test('evaluate: one JSON line per sample file, the same lines in --out', () => {
      const out = join(dir, 'metrics.json');
      const r = runBin('scoreflow', [
        'evaluate',
        '--samples',
        sampleA,
        sampleB,
        '--classifier',
        weights,
        '--ref-limit',
        '300',
        '--out',
        out,
        ...BACKEND,
      ]);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      assert.equal(lines.length, 2);
      assert.equal(readFileSync(out, 'utf8'), r.stdout);
      const [a, b] = lines;
      assert.equal(a.samples, sampleA);
      assert.equal(a.n, 100);
      assert.equal(b.n, 50);
      assert.equal(a.ref_n, 300);
      assert.ok(a.ref.endsWith('t10k-images-idx3-ubyte'));
      assert.ok(a.fd * 10 < b.fd, `${a.fd} vs ${b.fd}`);
      assert.ok(b.clipped_fraction > 0.1 && b.clipped_fraction < 0.25);
      assert.equal(a.class_counts.length, 10);
    });

    test('evaluate: bad input is one line, a non-zero exit and no --out', () => {
      const out = join(dir, 'bad.json');
      const wrong = join(dir, 'wrong.npy');
      writeNpySync(wrong, { shape: [4, 1, 14, 14], data: new Float32Array(4 * 196) });
      const nan = join(dir, 'nan.npy');
      writeNpySync(nan, { shape: [2, 1, 28, 28], data: new Float32Array(2 * 784).fill(NaN) });
      const notClf = join(dir, 'not-classifier.safetensors');
      writeSafetensorsSync(notClf, { w: { shape: [2], data: new Float32Array(2) } }, { format: 'something else' });
      const garbage = join(dir, 'garbage.safetensors');
      writeFileSync(garbage, 'not a safetensors file at all');
      const cases: [string[], RegExp][] = [
        [['--samples', join(dir, 'missing.npy'), '--classifier', weights], /missing\.npy: no such file/],
        [['--samples', wrong, '--classifier', weights], /wrong\.npy: samples have shape \[4,1,14,14\], expected \[N,1,28,28\]/],
        [['--samples', nan, '--classifier', weights], /nan\.npy: value NaN at image 0, pixel 0/],
        [['--samples', sampleA, '--classifier', notClf], /not a scoreflow MNIST classifier \(format 'something else'\)/],
        [['--samples', sampleA, '--classifier', 'test/fixtures/scorenet_parity.safetensors'], /not a scoreflow MNIST classifier/],
        [['--samples', sampleA, '--classifier', garbage], /garbage\.safetensors: /],
        [['--samples', sampleA, '--classifier', join(dir, 'nope.safetensors')], /nope\.safetensors: cannot read \(ENOENT\)/],
        [
          ['--samples', sampleA, '--classifier', weights, '--ref', 'mnist-validation'],
          /mnist-validation: no such file, and not a data set name/,
        ],
        [['--samples', sampleA, '--classifier', weights, '--ref-limit', '1'], /'--ref-limit <n>' argument '1' is invalid/],
        [['--samples', sampleA, '--classifier', weights, '--out', join(dir, 'm.txt')], /--out must name a \.json file/],
        [['--samples', sampleA, '--classifier', weights, '--out', join(dir, 'no', 'm.json')], /--out: directory '.*no' does not exist/],
        [['--classifier', weights], /required option '--samples <files\.\.\.>' not specified/],
      ];
      for (const [args, want] of cases) {
        const r = runBin('scoreflow', ['evaluate', ...args, ...(args.includes('--out') ? [] : ['--out', out]), ...BACKEND]);
        const lines = errorLines(r.stderr);
        assert.notEqual(r.code, 0, args.join(' '));
        assert.equal(lines.length, 1, `${args.join(' ')}: ${r.stderr}`);
        assert.match(lines[0], want);
        assert.match(lines[0], /^scoreflow: /);
        assert.equal(r.stdout, '');
        assert.ok(!existsSync(out), args.join(' '));
      }
    });

    test('classifier: trains, saves a loadable file and reports test accuracy; bad --out refused', () => {
      const out = join(dir, 'cli.safetensors');
      const r = runBin('scoreflow', [
        'classifier',
        '--out',
        out,
        '--epochs',
        '2',
        '--train-limit',
        '640',
        '--batch-size',
        '32',
        '--seed',
        '3',
        '--lr',
        '0.005',
        '--channels',
        '8,16',
        '--hidden',
        '32',
        ...BACKEND,
      ]);
      assert.equal(r.code, 0, r.stderr);
      const report = JSON.parse(r.stdout);
      assert.equal(report.steps, 40);
      assert.equal(report.test_n, 10000);
      assert.ok(report.test_accuracy > 0.4 && report.test_accuracy <= 1, `${report.test_accuracy}`);
      assert.match(r.stderr, /classifier: test accuracy \d+\.\d\d% on 10000 images/);
      const loaded = loadClassifier(out);
      try {
        assert.equal(Number(loaded.metadata.test_accuracy), report.test_accuracy);
        assert.equal(loaded.metadata.seed, '3');
        assert.equal(loaded.metadata.lr, '0.005');
        assert.deepEqual(loaded.config, SMALL);
      } finally {
        loaded.dispose();
      }
      for (const [args, want] of [
        [['--out', join(dir, 'c.bin')], /--out must name a \.safetensors file/],
        [['--out', join(dir, 'no', 'c.safetensors')], /--out: directory '.*no' does not exist/],
        [['--out', join(dir, 'c.safetensors'), '--epochs', '0'], /'--epochs <n>' argument '0' is invalid/],
        [['--out', join(dir, 'c.safetensors'), '--channels', '8'], /expected two positive integers like 32,64/],
      ] as [string[], RegExp][]) {
        const bad = runBin('scoreflow', ['classifier', ...args, ...BACKEND]);
        assert.notEqual(bad.code, 0);
        assert.deepEqual(errorLines(bad.stderr).length, 1, bad.stderr);
        assert.match(errorLines(bad.stderr)[0], want);
        assert.ok(!existsSync(join(dir, 'c.safetensors')));
      }
    });
  });
});
