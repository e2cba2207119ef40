/**
 * `scoreflow sample` and `scoreflow likelihood` end to end (wasm, the PyTorch parity weights as a
 * bare state_dict): the .npy/.png/.json set, the JSON report, and bad input as one line on
 * stderr, a non-zero exit and no output files.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { readNpy, writeNpySync } from '../src/core/io/npy.js';
import { getFloat32, readSafetensors } from '../src/core/io/safetensors.js';
import { fromTorchLayout, numParams, paramInfos } from '../src/core/model/params.js';
import { inferModelConfig, saveWeights } from '../src/core/model/weights.js';

const BIN = 'bin/scoreflow.js';
const dir = mkdtempSync(join(tmpdir(), 'scoreflow-sample-'));
const ckpt = join(dir, 'weights.safetensors');
after(() => rmSync(dir, { recursive: true, force: true }));

before(async () => {
  // the parity fixture's parameters alone, as a bare PyTorch-layout state_dict
  const file = readSafetensors('test/fixtures/scorenet_parity.safetensors');
  const model = inferModelConfig(file);
  const infos = paramInfos(model);
  const flat = new Float32Array(numParams(infos));
  for (const info of infos) flat.set(fromTorchLayout(info, getFloat32(file, info.name, info.torchShape)), info.offset);
  await saveWeights(ckpt, model, flat);
});

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args, '--backend', 'wasm'], { encoding: 'utf8' });
  return {
    code: r.status,
    stdout: r.stdout,
    stderr: r.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('backend:') && !/^(sample|likelihood)[: ]/.test(l)),
  };
}

function fresh(name: string): string {
  const d = join(dir, name);
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d);
  return d;
}

describe('scoreflow sample', () => {
  test('heun writes samples.npy [N,1,28,28], a PNG grid and a JSON summary', () => {
    const out = join(dir, 'h.npy');
    const r = run(
      'sample',
      '--ckpt',
      ckpt,
      '--sampler',
      'heun',
      '--steps',
      '2',
      '--n',
      '3',
      '--batch-size',
      '2',
      '--seed',
      '4',
      '--out',
      out,
    );
    assert.equal(r.code, 0, r.stderr.join('\n'));
    const npy = readNpy(out);
    assert.deepEqual(npy.shape, [3, 1, 28, 28]);
    assert.ok(npy.data.every(Number.isFinite));
    assert.ok(readFileSync(join(dir, 'h.png')).subarray(1, 4).toString() === 'PNG');
    const summary = JSON.parse(readFileSync(join(dir, 'h.json'), 'utf8'));
    assert.equal(summary.sampler, 'heun');
    assert.equal(summary.steps, 2);
    assert.equal(summary.nfe, 3);
    assert.equal(summary.seed, 4);
    assert.ok(summary.seconds > 0);
    assert.deepEqual(JSON.parse(r.stdout), summary);
  });

  test('ode with loose tolerances, then decoding its output as a latent', () => {
    const out = join(dir, 'o.npy');
    const r = run('sample', '--ckpt', ckpt, '--sampler', 'ode', '--rtol', '1e-2', '--atol', '1e-2', '--n', '1', '--out', out);
    assert.equal(r.code, 0, r.stderr.join('\n'));
    const s = JSON.parse(r.stdout);
    assert.ok(s.nfe >= 8 && s.steps === null);
    const r2 = run(
      'sample',
      '--ckpt',
      ckpt,
      '--sampler',
      'ode',
      '--rtol',
      '1e-2',
      '--atol',
      '1e-2',
      '--latent',
      out,
      '--out',
      join(dir, 'o2.npy'),
    );
    assert.equal(r2.code, 0, r2.stderr.join('\n'));
    assert.deepEqual(readNpy(join(dir, 'o2.npy')).shape, [1, 1, 28, 28]);
  });

  test('bad input: one line, non-zero exit, no output files', () => {
    const d = fresh('bad');
    const out = join(d, 's.npy');
    writeNpySync(join(dir, 'small.npy'), { shape: [2, 1, 14, 14], data: new Float32Array(2 * 196) });
    const cases: [string[], RegExp][] = [
      [['--sampler', 'ddim'], /argument 'ddim' is invalid\. Allowed choices are em, pc, ode, heun/],
      [['--steps', '0'], /'--steps <n>' argument '0' is invalid/],
      [['--sampler', 'em', '--steps', '1'], /steps must be an integer >= 2 for the em sampler/],
      [['--sampler', 'ode', '--rtol', '0'], /'--rtol <r>' argument '0' is invalid/],
      [['--sampler', 'ode', '--atol', '-1e-5'], /'--atol <a>' argument '-1e-5' is invalid/],
      [['--sampler', 'ode', '--latent', join(dir, 'small.npy')], /latent has shape \[2,1,14,14\], expected \[N,1,28,28\]/],
      [['--ckpt', join(dir, 'missing.safetensors')], /missing\.safetensors/],
    ];
    for (const [args, re] of cases) {
      const withCkpt = args.includes('--ckpt') ? args : ['--ckpt', ckpt, ...args];
      const r = run('sample', ...withCkpt, '--n', '1', '--out', out);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.equal(r.stderr.length, 1, `${args.join(' ')}: ${r.stderr.join(' | ')}`);
      assert.match(r.stderr[0], re);
      assert.deepEqual(readdirSync(d), [], `${args.join(' ')} left files`);
    }
    assert.ok(!existsSync(join(dir, 'samples.npy')));
  });
});

describe('scoreflow likelihood', () => {
  test('bits/dim of one test image as JSON on stdout and in --out', () => {
    const out = join(dir, 'l.json');
    const r = run(
      'likelihood',
      '--ckpt',
      ckpt,
      '--limit',
      '1',
      '--rtol',
      '1e-2',
      '--atol',
      '1e-2',
      '--hutchinson',
      'rademacher',
      '--out',
      out,
    );
    assert.equal(r.code, 0, r.stderr.join('\n'));
    const rep = JSON.parse(r.stdout);
    assert.deepEqual(JSON.parse(readFileSync(out, 'utf8')), rep);
    assert.equal(rep.n, 1);
    assert.equal(rep.per_image.length, 1);
    assert.ok(Number.isFinite(rep.bpd) && rep.bpd > 0);
    assert.equal(rep.hutchinson, 'rademacher');
  });

  test('bad input: one line, non-zero exit', () => {
    for (const [args, re] of [
      [['--hutchinson', 'laplace'], /argument 'laplace' is invalid/],
      [['--probes', '0'], /'--probes <k>' argument '0' is invalid/],
      [['--rtol', '-1'], /'--rtol <r>' argument '-1' is invalid/],
      [['--out', join(dir, 'x.txt')], /--out must name a \.json file/],
    ] as [string[], RegExp][]) {
      const r = run('likelihood', '--ckpt', ckpt, '--limit', '1', ...args);
      assert.notEqual(r.code, 0);
      assert.equal(r.stderr.length, 1, r.stderr.join(' | '));
      assert.match(r.stderr[0], re);
    }
  });
});
