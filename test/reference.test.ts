/**
 * The PyTorch reference (reference/) checks itself: closed forms for the VE SDE, the DSM loss, the
 * probability-flow ODE sampler and bits/dim (Gaussian data, whose flow is linear), the safetensors
 * and IDX formats, and the committed fixture's score, loss and gradients. The other suites trust it
 * (model, io): this is what lets them.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { packagePath } from '../src/core/paths.js';

test("reference/test_reference.py passes under Debian's python3 (closed forms and the fixture)", () => {
  const py = '/usr/bin/python3';
  assert.ok(existsSync(py), `${py} not found: install Debian's python3 with python3-torch, python3-numpy and python3-scipy`);
  const r = spawnSync(py, ['-m', 'unittest', '-v', 'test_reference'], {
    cwd: packagePath('reference'),
    encoding: 'utf8',
    timeout: 300_000,
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1', OPENBLAS_NUM_THREADS: '1' },
  });
  const out = `${r.stdout}${r.stderr}`;
  assert.equal(r.status, 0, `unittest failed (needs python3-torch, python3-numpy, python3-scipy):\n${out.slice(-4000)}`);
  const ran = /^Ran (\d+) tests?/m.exec(out);
  assert.ok(ran && Number(ran[1]) >= 11, `expected at least 11 tests to run:\n${out.slice(-2000)}`);
  assert.match(out, /^OK$/m);
});
