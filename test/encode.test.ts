/**
 * `scoreflow encode` end to end (wasm, a tiny randomly initialised ScoreNet written here): the
 * encode -> `sample --sampler ode --latent` round trip gives the test images back, the
 * .npy/.png/.json set, and bad input as one line on stderr, a non-zero exit and no output files.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PNG } from 'pngjs';
import { latentPixels, PNG_STDS } from '../src/cli/encode.js';
import { loadImages } from '../src/core/data/mnist.js';
import { readNpy, writeNpySync } from '../src/core/io/npy.js';
import { modelConfig } from '../src/core/model/config.js';
import { initParams, paramInfos } from '../src/core/model/params.js';
import { makeSde, SDE_DEFAULTS } from '../src/core/sde.js';
import { saveWeights } from '../src/core/model/weights.js';

const BIN = 'bin/scoreflow.js';
const dir = mkdtempSync(join(tmpdir(), 'scoreflow-encode-'));
const ckpt = join(dir, 'tiny.safetensors');
after(() => rmSync(dir, { recursive: true, force: true }));

/** Test images round-tripped, and the round trip's ODE tolerances (see the round-trip test). */
const N = 4;
const TOL = '1e-8';
/** Half an 8-bit grey level: a decoded image this close rounds back to the original bytes. */
const HALF_LEVEL = 0.5 / 255;

before(async () => {
  // a 28x28 ScoreNet narrow enough that a thousand RK45 evaluations take a few seconds on one thread
  const cfg = modelConfig({ channels: [4, 8, 8, 8], embedDim: 8 });
  await saveWeights(ckpt, cfg, initParams(paramInfos(cfg), 7));
});

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args, '--backend', 'wasm'], { encoding: 'utf8', timeout: 300_000 });
  return {
    code: r.status,
    stdout: r.stdout,
    stderr: r.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('backend:') && !/^(encode|sample)[: ]/.test(l)),
  };
}

function fresh(name: string): string {
  const d = join(dir, name);
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d);
  return d;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function rms(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s / a.length);
}

describe('scoreflow encode', () => {
  test('round trip: encode test images, decode with sample --sampler ode --latent, get them back', () => {
    const d = fresh('trip');
    const z = join(d, 'z.npy');
    // --batch-size 3: two batches, [0,3) and [3,4), so row offsets across batches are exercised too
    const r = run('encode', '--ckpt', ckpt, '--limit', String(N), '--batch-size', '3', '--rtol', TOL, '--atol', TOL, '--out', z);
    assert.equal(r.code, 0, r.stderr.join('\n'));
    const summary = JSON.parse(r.stdout);
    const x = join(d, 'x.npy');
    const r2 = run(
      'sample',
      '--ckpt',
      ckpt,
      '--sampler',
      'ode',
      '--latent',
      z,
      '--rtol',
      TOL,
      '--atol',
      TOL,
      '--eps',
      String(summary.eps),
      '--out',
      x,
    );
    assert.equal(r2.code, 0, r2.stderr.join('\n'));

    const images = loadImages('test', { limit: N }).data;
    const latent = readNpy(z).data;
    const decoded = readNpy(x);
    assert.deepEqual(decoded.shape, [N, 1, 28, 28]);
    // The flow moves the images far (latent rms ~18 for this net; the VE prior std is 22), so a
    // wrong direction, sign or time range, or rows mixed up, would be off by O(1) or more.
    assert.ok(rms(latent) > 5, `latent rms ${rms(latent)}: encode barely moved the images`);
    // Measured max |decoded - image| ~1.0e-3 at rtol = atol = 1e-8 (1.6e-3 at 1e-7, 4.7e-3 at
    // 1e-6; tighter tolerances stop helping near 5e-4, the float32 network's noise floor). Half a
    // grey level (1.96e-3) means every decoded pixel rounds back to the original byte.
    const err = maxAbsDiff(decoded.data, images);
    assert.ok(err < HALF_LEVEL, `round-trip max abs error ${err} >= ${HALF_LEVEL}`);
    // and each decoded image is its own, not another one of the batch
    const d1 = 784;
    for (let i = 0; i < N; i++) {
      const j = (i + 1) % N;
      const other = maxAbsDiff(decoded.data.subarray(i * d1, (i + 1) * d1), images.subarray(j * d1, (j + 1) * d1));
      assert.ok(other > 0.5, `decoded image ${i} is as close to image ${j} (${other})`);
    }
  });

  test('writes latents.npy [N,1,28,28], a PNG grid of the scaled latents and a JSON summary', () => {
    const d = fresh('set');
    const out = join(d, 'lat.npy');
    const r = run('encode', '--ckpt', ckpt, '--limit', '3', '--rtol', '1e-3', '--atol', '1e-3', '--eps', '0.01', '--out', out);
    assert.equal(r.code, 0, r.stderr.join('\n'));
    assert.deepEqual(readdirSync(d).sort(), ['lat.json', 'lat.npy', 'lat.png']);
    const npy = readNpy(out);
    assert.deepEqual(npy.shape, [3, 1, 28, 28]);
    assert.ok(npy.data.every(Number.isFinite));

    const summary = JSON.parse(readFileSync(join(d, 'lat.json'), 'utf8'));
    assert.deepEqual(JSON.parse(r.stdout), summary);
    assert.equal(summary.n, 3);
    assert.equal(summary.ckpt, ckpt);
    assert.equal(summary.weights, 'raw');
    assert.match(summary.data, /t10k-images/);
    assert.equal(summary.eps, 0.01);
    assert.equal(summary.rtol, 1e-3);
    assert.equal(summary.atol, 1e-3);
    assert.ok(summary.nfe >= 6 && summary.nfe_max >= summary.nfe, `nfe ${summary.nfe}, max ${summary.nfe_max}`);
    assert.ok(summary.seconds > 0);
    assert.equal(summary.backend, 'wasm');
    assert.deepEqual(summary.files, { npy: out, png: join(d, 'lat.png'), json: join(d, 'lat.json') });
    const priorStd = makeSde(SDE_DEFAULTS).priorStd();
    assert.ok(Math.abs(summary.prior_std - priorStd) < 1e-9 * priorStd, `prior_std ${summary.prior_std}`);
    assert.match(summary.png, new RegExp(`0\\.5 \\+ z / \\(${2 * PNG_STDS} \\* prior_std\\)`));

    // the grid: 2x2 cells of 28 + 2 border pixels; the first cell is the latent under the stated map
    const png = PNG.sync.read(readFileSync(join(d, 'lat.png')));
    assert.equal(png.width, 2 * 30 + 2);
    assert.equal(png.height, 2 * 30 + 2);
    const grey = latentPixels(npy.data.subarray(0, 784), summary.prior_std);
    let worst = 0;
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        const want = Math.round(255 * Math.min(1, Math.max(0, grey[y * 28 + x])));
        worst = Math.max(worst, Math.abs(png.data[4 * ((y + 2) * png.width + x + 2)] - want));
      }
    }
    assert.ok(worst <= 1, `PNG pixels differ from the stated mapping by up to ${worst}`);
  });

  test('help says the pixels are raw, not dequantised', () => {
    const r = spawnSync(process.execPath, [BIN, 'encode', '--help'], { encoding: 'utf8' });
    assert.equal(r.status, 0);
    assert.match(r.stdout, /raw \[0,1\] pixels, not dequantised/);
    assert.match(r.stdout, /--out <file\.npy>/);
  });

  test('bad input: one line, non-zero exit, no output files', () => {
    const d = fresh('bad');
    const out = join(d, 'z.npy');
    writeNpySync(join(dir, 'small.npy'), { shape: [2, 1, 14, 14], data: new Float32Array(2 * 196) });
    const cases: [string[], RegExp][] = [
      [['--out', join(d, 'z.txt')], /--out must name a \.npy file, got '.*z\.txt'/],
      [['--out', join(d, 'nowhere', 'z.npy')], /--out: directory '.*nowhere' does not exist/],
      [['--data', join(dir, 'small.npy')], /small\.npy: images are 14x14, the model takes 28x28/],
      [['--data', join(dir, 'absent.npy')], /absent\.npy: no such file/],
      [['--split', 'val'], /argument 'val' is invalid\. Allowed choices are test, train/],
      [['--limit', '0'], /'--limit <n>' argument '0' is invalid/],
      [['--rtol', '0'], /'--rtol <r>' argument '0' is invalid/],
      [['--eps', '0.9'], /'--eps <t>' argument '0\.9' is invalid/],
      [['--ckpt', join(dir, 'missing.safetensors')], /missing\.safetensors/],
    ];
    for (const [args, re] of cases) {
      const withCkpt = args.includes('--ckpt') ? args : ['--ckpt', ckpt, ...args];
      const withOut = args.includes('--out') ? withCkpt : [...withCkpt, '--out', out];
      const r = run('encode', '--limit', '1', ...withOut);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.equal(r.stderr.length, 1, `${args.join(' ')}: ${r.stderr.join(' | ')}`);
      assert.match(r.stderr[0], re);
      assert.equal(r.stdout, '', args.join(' '));
      assert.deepEqual(readdirSync(d), [], `${args.join(' ')} left files`);
    }
    assert.ok(!existsSync('latents.npy'));
  });
});
