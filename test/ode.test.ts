/**
 * src/core/ode/rk45.ts: known solutions within tolerance, scipy's NFE counts exactly (same
 * controller), NFE falling as tolerances loosen, per-problem independence in a batch, and the
 * stall error instead of a hang.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { OdeStallError, rk45, type BatchField } from '../src/core/ode/rk45.js';

/** A field applying the same scalar-parameterised f to each problem, with per-problem rate c_i. */
function decay(rates: number[]): BatchField {
  return async (t, y, ids) => Float64Array.from(ids, (i, j) => -rates[i] * y[j]);
}

describe('rk45', () => {
  test("y' = -y on [0, 10]: solution within tolerance, NFE equals scipy's solve_ivp RK45", async () => {
    // nfev from /usr/bin/python3: solve_ivp(lambda t, y: -y, (0, 10), [1.0], rtol=tol, atol=tol, method='RK45')
    const scipyNfev = new Map([
      [1e-9, 458],
      [1e-7, 200],
      [1e-5, 92],
      [1e-3, 50],
    ]);
    let last = Infinity;
    for (const [tol, nfev] of scipyNfev) {
      const r = await rk45(decay([1]), 0, 10, [1], 1, { rtol: tol, atol: tol });
      const err = Math.abs(r.y[0] - Math.exp(-10));
      assert.ok(err < 100 * tol, `tol ${tol}: error ${err}`);
      assert.equal(r.nfe[0], nfev, `tol ${tol}: nfe ${r.nfe[0]}`);
      assert.ok(r.nfe[0] < last, 'NFE must fall as the tolerance loosens');
      last = r.nfe[0];
    }
  });

  test('a 2-d time-dependent system, backwards in time, hits the reference solution', async () => {
    // y1' = cos(t) y2, y2' = -y1 from 0 to 5 (scipy: nfev 158, y(5) = [9.1326721, -17.15834734]);
    // then integrate back from 5 to 0 and recover y(0).
    const f: BatchField = async (t, y) => {
      const out = new Float64Array(y.length);
      for (let j = 0; j < t.length; j++) {
        out[2 * j] = Math.cos(t[j]) * y[2 * j + 1];
        out[2 * j + 1] = -y[2 * j];
      }
      return out;
    };
    const fwd = await rk45(f, 0, 5, [1, 0.5], 1, { rtol: 1e-6, atol: 1e-8 });
    assert.equal(fwd.nfe[0], 158);
    assert.ok(Math.abs(fwd.y[0] - 9.1326721) < 1e-6 * 10 && Math.abs(fwd.y[1] + 17.15834734) < 1e-6 * 20, `${fwd.y}`);
    const back = await rk45(f, 5, 0, fwd.y, 1, { rtol: 1e-9, atol: 1e-11 });
    assert.ok(Math.abs(back.y[0] - 1) < 1e-4 && Math.abs(back.y[1] - 0.5) < 1e-4, `${back.y}`);
  });

  test('problems in one batch are independent: each matches its solo solve bit for bit', async () => {
    const rates = [0.5, 3, 10, 1];
    const batch = await rk45(decay(rates), 0, 2, [1, 2, 3, 4], 4, { rtol: 1e-6, atol: 1e-6 });
    for (let i = 0; i < 4; i++) {
      const solo = await rk45(decay([rates[i]]), 0, 2, [i + 1], 1, { rtol: 1e-6, atol: 1e-6 });
      assert.equal(batch.y[i], solo.y[0]);
      assert.equal(batch.nfe[i], solo.nfe[0]);
      assert.ok(Math.abs(batch.y[i] - (i + 1) * Math.exp(-2 * rates[i])) < 1e-5);
    }
    assert.ok(batch.nfe[2] > batch.nfe[0], 'the stiffer problem takes more steps');
    // calls = the most steps of any problem, not the sum
    assert.ok(batch.calls < batch.nfe.reduce((a, b) => a + b, 0));
  });

  test('a blow-up stops with an error naming t and the step size, not a hang', async () => {
    // y' = y^2, y(0) = 1: y = 1/(1-t) explodes at t = 1
    const f: BatchField = async (t, y) => Float64Array.from(y, (v) => v * v);
    await assert.rejects(rk45(f, 0, 2, [1], 1, { rtol: 1e-6, atol: 1e-6 }), (e: unknown) => {
      assert.ok(e instanceof OdeStallError);
      assert.ok(Math.abs(e.t - 1) < 1e-3, `t ${e.t}`);
      assert.match(e.message, /stalled at t=[\d.]+: step size [\d.]+e-\d+ fell below the floor/);
      assert.ok(!e.message.includes('\n'));
      return true;
    });
    // a field that turns NaN is rejected step after step until the floor
    const nan: BatchField = async (t, y) => Float64Array.from(y, (v, j) => (t[j] > 0.5 ? NaN : -v));
    await assert.rejects(rk45(nan, 0, 1, [1], 1), /stalled at t=0\.5/);
  });

  test('bad options are one-line errors', async () => {
    await assert.rejects(rk45(decay([1]), 0, 1, [1], 1, { rtol: 0 }), /rtol must be a positive number/);
    await assert.rejects(rk45(decay([1]), 0, 1, [1], 1, { atol: -1 }), /atol must be a positive number/);
    await assert.rejects(rk45(decay([1]), 0, 0, [1], 1), /t0 != t1/);
    await assert.rejects(rk45(decay([1]), 0, 1, [1, 2, 3], 2), /do not split/);
  });
});
