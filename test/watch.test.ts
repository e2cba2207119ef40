/**
 * --eval-every: `scoreflow train` scores its EMA weights every N steps (bits/dim of fixed test
 * images, a fixed-seed Heun grid) into DIR/eval/ and log.jsonl; the same checkpoint scored again by
 * `scoreflow watch` gives the same numbers (fixed seeds); `coordinator start` does it from its
 * checkpoints in a child process and logs it in train.jsonl. A tiny ScoreNet, loose tolerances, wasm.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { PNG } from 'pngjs';
import { runBin, tempDir, TINY_NET } from './helpers/cli.js';

const SMALL = [...TINY_NET, '--limit', '64', '--batch-size', '8', '--backend', 'wasm', '--threads', '1'];
const EVAL = ['--eval-images', '3', '--eval-samples', '4', '--eval-tol', '0.1'];

function lines(path: string): Record<string, unknown>[] {
  return readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

interface Rec {
  step: number;
  bpd: number;
  bpd_images: number;
  samples: number;
  sample_nfe: number;
  png: string;
}

test('scoreflow train --eval-every 2: eval/step-K.{png,json} and an eval line after steps 2 and 4; scoreflow watch agrees', () => {
  const out = tempDir();
  const r = runBin('scoreflow', ['train', '--recipe', 'likelihood', ...SMALL, '--steps', '4', '--eval-every', '2', ...EVAL, '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  const log = lines(join(out, 'log.jsonl'));
  assert.deepEqual(
    log.map((l) => [l.step, 'eval' in l]),
    [
      [1, false],
      [2, false],
      [2, true],
      [3, false],
      [4, false],
      [4, true],
    ],
  );
  for (const k of [2, 4]) {
    const rec = JSON.parse(readFileSync(join(out, 'eval', `step-${k}.json`), 'utf8')) as Rec;
    assert.deepEqual(rec, log.find((l) => l.step === k && 'eval' in l)!.eval);
    assert.equal(rec.step, k);
    assert.equal(rec.bpd_images, 3);
    assert.ok(Number.isFinite(rec.bpd) && rec.bpd > 0, `bpd ${rec.bpd}`);
    assert.equal(rec.sample_nfe, 99, 'Heun at its defaults');
    const png = PNG.sync.read(readFileSync(join(out, 'eval', `step-${k}.png`)));
    assert.equal(png.width, 2 * 28 + 3 * 2, 'a 2x2 grid of 28x28 with 2-pixel padding');
  }
  // the curve is comparable: the final checkpoint scored again from the file gives step 4's numbers
  const again = tempDir();
  const w = runBin('scoreflow', [
    'watch',
    '--ckpt',
    join(out, 'checkpoint.safetensors'),
    '--step',
    '4',
    '--out',
    again,
    ...EVAL,
    '--backend',
    'wasm',
  ]);
  assert.equal(w.code, 0, w.stderr);
  const rec4 = JSON.parse(readFileSync(join(out, 'eval', 'step-4.json'), 'utf8')) as Rec;
  const rew = JSON.parse(w.stdout) as Rec;
  assert.equal(rew.bpd, rec4.bpd);
  assert.ok(readFileSync(join(again, 'eval', 'step-4.png')).equals(readFileSync(join(out, 'eval', 'step-4.png'))), 'the same grid');
});

test('coordinator start --eval-every 2: its checkpoints scored in a child process, logged in train.jsonl', () => {
  const out = tempDir();
  const r = runBin('coordinator', [
    'start',
    '--gpus',
    '1',
    ...SMALL,
    '--steps',
    '4',
    '--ckpt-every',
    '2',
    '--eval-every',
    '2',
    ...EVAL,
    '--out',
    out,
  ]);
  assert.equal(r.code, 0, r.stderr.split('\n').slice(-20).join('\n'));
  const evals = lines(join(out, 'train.jsonl')).filter((l) => 'eval' in l);
  // train.jsonl counts steps from 0: the checkpoint of step S is logged under S - 1
  assert.deepEqual(
    evals.map((l) => [l.step, (l.eval as Rec).step]),
    [
      [1, 2],
      [3, 4],
    ],
  );
  for (const k of [2, 4]) {
    assert.ok(existsSync(join(out, 'eval', `step-${k}.png`)));
    assert.ok(!existsSync(join(out, 'eval', `.ckpt-${k}.safetensors`)), 'the checkpoint copy is removed');
  }
  assert.match(r.stderr, /coordinator: eval at step 4: \d+\.\d+ ± \d+\.\d+ bits\/dim/);
});
