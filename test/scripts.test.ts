/**
 * The user-facing scripts, end to end at toy size: `scripts/quickstart.sh` (classifier, a 2-worker
 * cluster run with its own nats-server, Heun samples, evaluation, the closing metric line) on a
 * runs folder that does not exist yet, and `scripts/recipe-sweep.sh` (train, continue with
 * --resume, sample, evaluate, the table). Both are run again to check that finished work is
 * reused, not redone. Sizes come from the scripts' documented *_FLAGS variables; the code paths
 * are the ones a user runs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { packagePath } from '../src/core/paths.js';
import { tempDir } from './helpers/cli.js';

const dir = tempDir('scoreflow-scripts-');
after(() => rmSync(dir, { recursive: true, force: true }));

const runs = join(dir, 'fresh', 'runs'); // neither folder exists: the quick start must make them
const clf = join(runs, 'classifier.safetensors');
const TOY = {
  CLASSIFIER_FLAGS: '--epochs 1 --train-limit 512 --channels 8,16 --hidden 32 --threads 1',
  SAMPLE_FLAGS: '--steps 3', // Heun with 3 noise levels: 5 network evaluations
  EVALUATE_FLAGS: '--ref-limit 256',
};

function script(name: string, args: string[], env: Record<string, string>) {
  const r = spawnSync('bash', [packagePath('scripts', name), ...args], {
    encoding: 'utf8',
    timeout: 300_000,
    env: { ...process.env, ...TOY, ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function jsonLines(path: string): Record<string, unknown>[] {
  return readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const LINE =
  /^quickstart: (.+): FD (\d+\.\d) \((\d+) Heun samples vs MNIST test; 512 real digits: 13\.2\), confidence (\d\.\d{3}), (\d+)\/10 digits \(fewest (\d+)\), (\d+) s after setup$/;

describe('scripts/quickstart.sh', () => {
  const env = { QUICKSTART_SETUP: '0', QUICKSTART_RUNS: runs, QUICKSTART_EPOCHS: '1', QUICKSTART_N: '16', TRAIN_FLAGS: '--limit 240' };
  const out = join(runs, 'quickstart');
  let firstLine = '';

  test('a fresh runs folder: classifier, 2-worker cluster, samples, evaluation and one closing line', () => {
    const r = script('quickstart.sh', [], env);
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    const lines = r.stdout.trim().split('\n');
    firstLine = lines[lines.length - 1];
    const m = LINE.exec(firstLine);
    assert.ok(m, `closing line: ${firstLine}`);
    assert.equal(m[1], join(out, 'samples.png'));
    assert.equal(m[3], '16');

    // the line reports what evaluate measured
    const metrics = JSON.parse(readFileSync(join(out, 'metrics.json'), 'utf8')) as {
      fd: number;
      confidence: number;
      class_counts: number[];
    };
    assert.equal(m[2], metrics.fd.toFixed(1));
    assert.equal(m[4], metrics.confidence.toFixed(3));
    assert.equal(Number(m[5]), metrics.class_counts.filter((c) => c > 0).length);
    assert.equal(Number(m[6]), Math.min(...metrics.class_counts));
    assert.equal(
      metrics.class_counts.reduce((a, b) => a + b, 0),
      16,
    );

    // 240 images at the fast recipe's batch 120: one epoch is 2 steps, on 2 workers
    const steps = jsonLines(join(out, 'train.jsonl'));
    assert.deepEqual(
      steps.map((s) => s.step),
      [0, 1],
    );
    assert.ok(
      steps.every((s) => s.workers === 2),
      JSON.stringify(steps),
    );
    assert.ok(existsSync(join(out, 'checkpoint.safetensors')) && existsSync(clf));
    assert.deepEqual([...readFileSync(join(out, 'samples.png')).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const summary = JSON.parse(readFileSync(join(out, 'samples.json'), 'utf8')) as { n: number; nfe: number };
    assert.equal(summary.n, 16);
    assert.equal(summary.nfe, 5);
  });

  test('run again: the classifier and the finished training are reused, the line is the same', () => {
    assert.ok(firstLine, 'needs the first run');
    const r = script('quickstart.sh', [], env);
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.doesNotMatch(r.stderr, /^classifier: /m, 'the classifier was trained again');
    assert.equal(jsonLines(join(out, 'train.jsonl')).length, 2, 'training steps were taken again');
    const line = r.stdout.trim().split('\n').pop() ?? '';
    assert.equal(line.replace(/\d+ s after setup$/, ''), firstLine.replace(/\d+ s after setup$/, ''));
  });
});

describe('scripts/recipe-sweep.sh', () => {
  const sweep = join(dir, 'sweep');
  const env = { SWEEP_CLASSIFIER: clf, TRAIN_FLAGS: '--limit 240 --threads 1', LIKELIHOOD_FLAGS: '--rtol 0.1 --atol 0.1 --batch-size 4' };
  const args = [sweep, '1 2', 'fast', '8', '4']; // and bits/dim of the first 4 test images
  let firstTable = '';

  test('one recipe at 1 and 2 epochs: a row and a table line per point', () => {
    const r = script('recipe-sweep.sh', args, env);
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    const rows = jsonLines(join(sweep, 'sweep.jsonl'));
    assert.deepEqual(
      rows.map((x) => [x.recipe, x.epochs, x.steps, x.samples, x.nfe]),
      [
        ['fast', 1, 2, 8, 5],
        ['fast', 2, 4, 8, 5],
      ],
    );
    for (const x of rows) {
      assert.ok(Number.isFinite(x.fd) && (x.fd as number) > 0, `fd ${String(x.fd)}`);
      assert.ok(Number.isFinite(x.bpd) && (x.bpd as number) > 0 && (x.bpd_stderr as number) > 0, `bpd ${String(x.bpd)}`);
      assert.equal(x.bpd_n, 4);
      assert.ok((x.train_s as number) >= 0 && (x.confidence as number) > 0 && (x.confidence as number) <= 1);
    }
    // the 2-epoch point continued the 1-epoch run: 4 steps logged once each
    assert.deepEqual(
      jsonLines(join(sweep, 'fast', 'log.jsonl')).map((l) => l.step),
      [1, 2, 3, 4],
    );
    firstTable = r.stdout.trim();
    const table = firstTable.split('\n');
    assert.match(table[0], /^\| recipe \| epochs \| steps \| train s \| FD \(8\) \|.* bits\/dim \(test images\) \|$/);
    assert.deepEqual(
      table.slice(2).map((l) => l.split(' | ').slice(0, 3)),
      [
        ['| fast', '1', '2'],
        ['| fast', '2', '4'],
      ],
    );
  });

  test('run again: finished points are reused, nothing is trained or sampled', () => {
    assert.ok(firstTable, 'needs the first run');
    const r = script('recipe-sweep.sh', args, env);
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.doesNotMatch(r.stderr, /^(train|sample|likelihood): /m);
    assert.equal(r.stdout.trim(), firstTable);
  });
});
