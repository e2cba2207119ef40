/**
 * src/core/io: atomic writes (including kill -9 mid-write), safetensors and .npy against
 * the PyTorch/NumPy reference (reference/safetensors_io.py run by Debian's python3),
 * the PyTorch-made parity fixture, PNG grids, and one-line errors on corrupt files.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import { PNG } from 'pngjs';
import {
  cleanAtomicTemps,
  parseTempName,
  writeFileAtomic,
  writeFileAtomicSync,
  writeFilesAtomic,
  writeFilesAtomicSync,
} from '../src/core/io/atomic.js';
import { decodeNpy, encodeNpy, readNpy, writeNpy, writeNpySync } from '../src/core/io/npy.js';
import { gridPixels, pngGrid, writePng } from '../src/core/io/png.js';
import {
  CorruptDataError,
  DIGEST_KEY,
  decodeSafetensors,
  encodeSafetensors,
  getFloat32,
  inspectSafetensors,
  readSafetensors,
  withMetadata,
  writeSafetensors,
  writeSafetensorsSync,
  type TensorInput,
} from '../src/core/io/safetensors.js';
import { loadImages } from '../src/core/data/mnist.js';
import { packagePath } from '../src/core/paths.js';

const dir = mkdtempSync(join(tmpdir(), 'scoreflow-io-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Assert `fn` throws one Error whose message is a single line containing every `part`. */
function throwsOneLine(fn: () => unknown, ...parts: (string | RegExp)[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error, 'not an Error');
    assert.ok(!e.message.includes('\n'), `multi-line message: ${e.message}`);
    for (const p of parts) {
      if (typeof p === 'string') assert.ok(e.message.includes(p), `message lacks '${p}': ${e.message}`);
      else assert.match(e.message, p);
    }
    return true;
  });
}

const bitsEqual = (a: Float32Array, b: Float32Array): boolean =>
  a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

// ------------------------------------------------------------------ atomic writes

describe('atomic writes', () => {
  test('write, overwrite, chunks and strings, no temp left behind', async () => {
    const p = join(dir, 'a.bin');
    writeFileAtomicSync(p, 'old');
    writeFileAtomicSync(p, [Buffer.from('ab'), new Uint8Array([99]), Buffer.alloc(0)]);
    assert.equal(readFileSync(p, 'utf8'), 'abc');
    await writeFileAtomic(p, new Uint8Array([1, 2, 3]));
    assert.deepEqual([...readFileSync(p)], [1, 2, 3]);
    assert.deepEqual(
      readdirSync(dir).filter((n) => parseTempName(n)),
      [],
    );
  });

  test('writeFilesAtomic: a failing member leaves every target untouched and no temps', async () => {
    const a = join(dir, 'set.npy');
    const b = join(dir, 'set.json');
    const bad = join(dir, 'no-such-dir', 'set.png');
    writeFileAtomicSync(a, 'old a');
    for (const write of [writeFilesAtomicSync, writeFilesAtomic]) {
      await assert.rejects(
        async () =>
          write([
            [a, 'new a'],
            [b, 'new b'],
            [bad, 'x'],
          ]),
        /no-such-dir.*create temp file/,
      );
      assert.equal(readFileSync(a, 'utf8'), 'old a');
      assert.ok(!existsSync(b));
      assert.deepEqual(
        readdirSync(dir).filter((n) => parseTempName(n)),
        [],
      );
    }
    await writeFilesAtomic([
      [a, 'new a'],
      [b, 'new b'],
    ]);
    assert.equal(readFileSync(a, 'utf8') + readFileSync(b, 'utf8'), 'new anew b');
  });

  test('kill -9 mid-write leaves the old target or the complete new one; temps are cleanable', async () => {
    const CHUNK = 1 << 20;
    const N = 96; // 96 MiB: long enough to be caught mid-write
    const target = join(dir, 'big.bin');
    const atomicUrl = pathToFileURL(packagePath('dist/src/core/io/atomic.js')).href;
    const child = `import { writeFileAtomicSync } from '${atomicUrl}';
      const chunks = Array.from({ length: ${N} }, (_, i) => Buffer.alloc(${CHUNK}, i & 255));
      process.stdout.write('go\\n');
      writeFileAtomicSync(${JSON.stringify(target)}, chunks);
      process.stdout.write('done\\n');`;

    const isOld = (): boolean => readFileSync(target, 'utf8') === 'old';
    const isNew = (): boolean => {
      const b = readFileSync(target);
      if (b.length !== N * CHUNK) return false;
      for (let i = 0; i < N; i++) if (b[i * CHUNK] !== (i & 255) || b[(i + 1) * CHUNK - 1] !== (i & 255)) return false;
      return true;
    };

    /** Run the writer; `killWhen` polls until it says kill (or the child finishes). */
    async function run(killWhen: (temps: string[]) => boolean): Promise<{ killed: boolean; tempsAtKill: number }> {
      writeFileSync(target, 'old');
      const p = spawn(process.execPath, ['--input-type=module', '-e', child], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      const exit = new Promise<string | null>((res) => p.on('exit', (_c, sig) => res(sig)));
      while (!out.includes('go')) await sleep(1);
      let killed = false;
      let tempsAtKill = 0;
      while (!out.includes('done') && p.exitCode === null) {
        const temps = readdirSync(dir).filter((n) => parseTempName(n)?.target === 'big.bin');
        if (killWhen(temps)) {
          tempsAtKill = temps.length;
          killed = p.kill('SIGKILL');
          break;
        }
        await yieldToLoop();
      }
      await exit;
      return { killed, tempsAtKill };
    }

    // 1. killed while the temp file is part-written: the target is still the old file
    const partial = (temps: string[]): boolean =>
      temps.some((n) => {
        try {
          return statSync(join(dir, n)).size >= 4 * CHUNK;
        } catch {
          return false;
        }
      });
    let r1 = await run(partial);
    // a very fast disk could let the writer finish before we look; try a few times
    for (let tries = 1; !r1.killed && tries < 5; tries++) r1 = await run(partial);
    assert.ok(r1.killed && r1.tempsAtKill === 1, 'writer always finished before it could be killed mid-write');
    assert.ok(isOld(), 'target changed by a killed writer');
    const removed = cleanAtomicTemps(dir);
    assert.equal(removed.length, 1);
    assert.deepEqual(
      readdirSync(dir).filter((n) => parseTempName(n)),
      [],
    );

    // 2. killed at arbitrary moments (after 0..8 polls): old or complete new, never a prefix
    for (const polls of [0, 2, 8]) {
      let k = 0;
      await run(() => k++ >= polls);
      assert.ok(isOld() || isNew(), `half-written target after kill at poll ${polls}`);
      cleanAtomicTemps(dir);
    }

    // 3. left alone: the complete new file
    await run(() => false);
    assert.ok(isNew());
    rmSync(target);
  });
});

// ------------------------------------------------------------------ safetensors

function sample(): Record<string, TensorInput> {
  return {
    'conv1.weight': { shape: [2, 1, 3, 3], data: Float32Array.from({ length: 18 }, (_, i) => (i - 9) / 4) },
    'b.bias': { shape: [3], data: new Float32Array([1e-30, -0, 3.4e38]) },
    scalar: { shape: [], data: new Float32Array([Math.PI]) },
    empty: { shape: [0, 4], data: new Float32Array(0) },
    f64: { shape: [2], data: new Float64Array([Math.PI, -1e300]) },
    i64: { shape: [2], data: new BigInt64Array([-(2n ** 62n), 7n]) },
    i32: { shape: [2], data: new Int32Array([-5, 2 ** 31 - 1]) },
    u8: { shape: [3], data: new Uint8Array([0, 128, 255]) },
  };
}
const META = { step: '12', seed: '0', note: 'σ_max = 22 ✓' };

describe('safetensors', () => {
  test('round trip of every dtype, scalar and empty shapes, metadata; sorted, 8-aligned', async () => {
    const p = join(dir, 'rt.safetensors');
    await writeSafetensors(p, sample(), META);
    const f = readSafetensors(p);
    assert.deepEqual([...f.tensors.keys()], Object.keys(sample()).sort());
    assert.deepEqual(f.metadata, META);
    for (const [name, t] of Object.entries(sample())) {
      const got = f.tensors.get(name)!;
      assert.deepEqual(got.shape, t.shape, name);
      assert.deepEqual(got.data, t.data, name);
    }
    assert.equal(f.tensors.get('f64')!.dtype, 'F64');
    assert.equal(readFileSync(p).readBigUInt64LE(0) % 8n, 0n);
    assert.ok(bitsEqual(getFloat32(f, 'b.bias', [3]), sample()['b.bias'].data as Float32Array)); // keeps -0
    assert.deepEqual([...getFloat32(f, 'i64')], [-(2 ** 62), 7]);
    assert.ok(encodeSafetensors(sample(), META).equals(readFileSync(p)));
    assert.deepEqual(decodeSafetensors(encodeSafetensors({})).tensors.size, 0);
  });

  test('getFloat32 names the file and tensor on missing, wrong shape, NaN', () => {
    const p = join(dir, 'ck.safetensors');
    writeSafetensorsSync(p, { w: { shape: [2, 2], data: new Float32Array([1, 2, NaN, 4]) } });
    const f = readSafetensors(p);
    throwsOneLine(() => getFloat32(f, 'v'), p, "'v' is missing");
    throwsOneLine(() => getFloat32(f, 'w', [4]), p, 'shape [2,2], expected [4]');
    throwsOneLine(() => getFloat32(f, 'w'), p, 'non-finite', 'index 2');
    assert.equal(getFloat32(f, 'w', [2, 2], { finite: false }).length, 4);
  });

  test('writer rejects bad input with one line', () => {
    throwsOneLine(() => encodeSafetensors({ w: { shape: [3], data: new Float32Array(2) } }), "'w'", 'needs 3 values');
    throwsOneLine(() => encodeSafetensors({ w: { shape: [-1], data: new Float32Array(1) } }), 'non-negative');
    throwsOneLine(() => encodeSafetensors({ __metadata__: { shape: [1], data: new Float32Array(1) } }), 'invalid tensor name');
    throwsOneLine(() => encodeSafetensors({}, { a: 1 as unknown as string }), "metadata 'a'");
  });

  test('the PyTorch parity fixture reads with the right names and shapes; input.x is MNIST test[0:8]/255 exactly', () => {
    const path = packagePath('test/fixtures/scorenet_parity.safetensors');
    const f = readSafetensors(path);
    const shape = (n: string): number[] | undefined => f.tensors.get(n)?.shape;
    assert.deepEqual(shape('conv1.weight'), [32, 1, 3, 3]);
    assert.deepEqual(shape('tconv4.weight'), [256, 128, 3, 3]); // conv-transpose: [in, out, kh, kw]
    assert.deepEqual(shape('dense1.dense.weight'), [32, 256]); // linear: [out, in]
    assert.deepEqual(shape('embed.W'), [128]);
    assert.deepEqual(shape('input.x'), [8, 1, 28, 28]);
    assert.deepEqual(shape('input.t'), [8]);
    assert.deepEqual(shape('output.loss'), [1]); // the fixture stores the loss as [1], not []
    assert.deepEqual(shape('grad.conv1.weight'), [32, 1, 3, 3]);
    assert.equal(f.tensors.size, 80); // 38 state_dict tensors, 37 grads (embed.W is fixed), 3 inputs, 2 outputs
    assert.ok([...f.tensors.values()].every((t) => t.dtype === 'F32'));
    assert.equal(f.metadata.sigma_max, '22.0');
    const x = getFloat32(f, 'input.x', [8, 1, 28, 28]);
    assert.ok(bitsEqual(x, loadImages('test', { limit: 8 }).data), 'input.x differs from MNIST t10k[0:8]/255');
  });

  test('corrupt files give one-line errors naming the file', () => {
    const good = encodeSafetensors({ a: { shape: [2], data: new Float32Array([1, 2]) }, b: { shape: [1], data: new Float32Array([3]) } });
    const raw = (header: unknown, data = 12): Buffer => {
      const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
      const n = Buffer.alloc(8);
      n.writeBigUInt64LE(BigInt(h.length));
      return Buffer.concat([n, h, Buffer.alloc(data)]);
    };
    const ent = (dtype: string, shape: number[], off: number[]): unknown => ({ dtype, shape, data_offsets: off });
    const cases: [string, Uint8Array, string][] = [
      ['short', good.subarray(0, 5), 'too short'],
      ['truncated-header', good.subarray(0, 20), 'exceeds the file'],
      ['truncated-data', good.subarray(0, good.length - 2), 'run past the data'],
      ['trailing', Buffer.concat([good, Buffer.alloc(4)]), 'trailing data bytes'],
      ['json', raw('{"a": '), 'not valid UTF-8 JSON'],
      ['array', raw('[1,2]'), 'not a JSON object'],
      ['dtype', raw({ a: ent('BF16', [6], [0, 12]) }), 'unsupported dtype "BF16"'],
      ['shape', raw({ a: ent('F32', [2, -1], [0, 12]) }), 'shape [2,-1]'],
      ['offsets', raw({ a: ent('F32', [3], [8, 4]) }), 'data_offsets [8,4]'],
      ['size', raw({ a: ent('F32', [2], [0, 12]) }), 'hold 12 bytes but F32 [2] needs 8'],
      ['overlap', raw({ a: ent('F32', [2], [0, 8]), b: ent('F32', [2], [4, 12]) }), "'b' [4,12] overlaps tensor 'a'"],
      ['gap', raw({ a: ent('F32', [1], [0, 4]), b: ent('F32', [1], [8, 12]) }), 'bytes [4,8) belong to no tensor'],
      ['meta', raw({ __metadata__: { a: 1 }, a: ent('U8', [12], [0, 12]) }), "__metadata__ 'a' is not a string"],
    ];
    for (const [name, bytes, msg] of cases) {
      const p = join(dir, `bad-${name}.safetensors`);
      writeFileSync(p, bytes);
      throwsOneLine(() => readSafetensors(p), p, msg);
    }
    throwsOneLine(() => readSafetensors(join(dir, 'absent.safetensors')), 'absent.safetensors', 'ENOENT');
  });

  test('a digest (data_sha256) is verified on every read: one flipped data bit is one line naming the file', async () => {
    const p = join(dir, 'digest.safetensors');
    await writeSafetensors(p, sample(), META, { digest: true });
    const f = readSafetensors(p);
    assert.equal(f.digest, 'verified');
    assert.match(f.metadata[DIGEST_KEY], /^[0-9a-f]{64}$/);
    assert.equal(readSafetensors(join(dir, 'rt.safetensors')).digest, 'none'); // written without: loads as before
    const bytes = readFileSync(p);
    for (const at of [bytes.length - 1, bytes.length - 40]) {
      const bad = Buffer.from(bytes);
      bad[at] ^= 1;
      writeFileSync(join(dir, 'flipped.safetensors'), bad);
      throwsOneLine(() => readSafetensors(join(dir, 'flipped.safetensors')), join(dir, 'flipped.safetensors'), 'corrupt', DIGEST_KEY);
      assert.throws(() => inspectSafetensors(bad, 'x'), CorruptDataError);
    }
    // metadata stamped in afterwards (the coordinator's run id) leaves the data and their digest valid
    const stamped = Buffer.concat(withMetadata(bytes, { run: 'r1' }, p));
    const g = decodeSafetensors(stamped, 'stamped');
    assert.equal(g.digest, 'verified');
    assert.equal(g.metadata.run, 'r1');
    assert.equal(g.metadata.step, META.step);
    assert.deepEqual(g.tensors.get('conv1.weight')!.data, sample()['conv1.weight'].data);
  });

  test('devices, pipes and directories are refused before reading (a read of /dev/zero never ends)', () => {
    throwsOneLine(() => readSafetensors('/dev/zero'), '/dev/zero', 'character device, not a regular file');
    throwsOneLine(() => readSafetensors(dir), 'a directory, not a regular file');
    throwsOneLine(() => readNpy('/dev/zero'), '/dev/zero', 'not a regular file');
  });
});

// ------------------------------------------------------------------ npy

describe('npy', () => {
  test('round trip, scalar and 1-d shapes, 64-aligned header', async () => {
    for (const shape of [[2, 3, 4], [5], [], [0, 3]]) {
      const n = shape.reduce((a, b) => a * b, 1);
      const a = { shape, data: Float32Array.from({ length: n }, (_, i) => i / 7 - 1) };
      const buf = encodeNpy(a);
      assert.equal((10 + buf.readUInt16LE(8)) % 64, 0);
      assert.deepEqual(decodeNpy(buf), a);
    }
    const p = join(dir, 'x.npy');
    await writeNpy(p, { shape: [2], data: new Float32Array([1, 2]) });
    writeNpySync(p, { shape: [1, 2], data: new Float32Array([3, 4]) });
    assert.deepEqual(readNpy(p), { shape: [1, 2], data: new Float32Array([3, 4]) });
  });

  test('corrupt files give one-line errors naming the file', () => {
    const good = encodeNpy({ shape: [2, 2], data: new Float32Array(4) });
    const withHeader = (h: string): Buffer => {
      const buf = Buffer.from(good);
      buf.write(h.padEnd(buf.readUInt16LE(8) - 1, ' '), 10, 'latin1');
      return buf;
    };
    const version = Buffer.from(good);
    version[6] = 9;
    const cases: [string, Uint8Array, string][] = [
      ['magic', Buffer.from('PK\x03\x04 not numpy'), 'bad magic'],
      ['version', version, 'version 9.0'],
      ['header-len', good.subarray(0, 40), 'runs past the file'],
      ['truncated', good.subarray(0, good.length - 1), 'truncated: shape (2, 2) needs 16 data bytes, file has 15'],
      ['trailing', Buffer.concat([good, Buffer.alloc(4)]), '4 trailing bytes'],
      ['f8', withHeader("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1), }"), "dtype '<f8'"],
      ['fortran', withHeader("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }"), 'Fortran-order'],
      ['header', withHeader("{'descr': '<f4', 'shape': (2, 2), }"), 'malformed .npy header'],
      ['shape', withHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }"), 'bad shape'],
    ];
    for (const [name, bytes, msg] of cases) {
      const p = join(dir, `bad-${name}.npy`);
      writeFileSync(p, bytes);
      throwsOneLine(() => readNpy(p), p, msg);
    }
  });
});

// ------------------------------------------------------------------ interchange with Python

/** Debian's python3 (not a pyenv one) with numpy and torch, and the package's reference/ folder. */
function python(script: string, ...args: string[]): unknown {
  const py = '/usr/bin/python3';
  const ref = packagePath('reference');
  assert.ok(existsSync(join(ref, 'safetensors_io.py')), `${ref}/safetensors_io.py not found`);
  assert.ok(existsSync(py), `${py} not found: install Debian's python3 with python3-numpy and python3-torch`);
  const r = spawnSync(py, ['-c', `import sys; sys.path.insert(0, ${JSON.stringify(ref)})\n${script}`, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(r.status, 0, `${py} failed (needs python3-numpy, python3-torch): ${r.stderr || r.error}`);
  return JSON.parse(r.stdout);
}

describe('interchange with the Python reference', () => {
  let py: Record<string, unknown>;
  const ours = join(dir, 'ours.safetensors');
  const oursNpy = join(dir, 'ours.npy');
  before(async () => {
    await writeSafetensors(ours, sample(), META);
    await writeNpy(oursNpy, { shape: [2, 3, 4], data: Float32Array.from({ length: 24 }, (_, i) => i / 7) });
    // one python run does every check (importing torch takes a second or two)
    py = python(
      `
import json, numpy as np
from safetensors_io import load_safetensors, save_safetensors
d = sys.argv[1]
t, m = load_safetensors(d + '/ours.safetensors')
save_safetensors(d + '/resaved.safetensors', t, m)
save_safetensors(d + '/py.safetensors', {'x': np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    'loss': np.array(1.5, dtype=np.float32), 'i': np.array([-3, 4], dtype=np.int64)}, {'seed': 5})
a = np.load(d + '/ours.npy')
np.save(d + '/py.npy', np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7)
np.save(d + '/py_scalar.npy', np.float32(2.5))
print(json.dumps({'names': sorted(t), 'shapes': {k: list(v.shape) for k, v in t.items()},
    'dtypes': {k: v.dtype.str for k, v in t.items()}, 'meta': m,
    'conv': t['conv1.weight'].ravel().tolist(),
    'npy': {'shape': list(a.shape), 'dtype': a.dtype.str, 'equal': bool(np.array_equal(a, np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7))}}))
`,
      dir,
    ) as Record<string, unknown>;
  });

  test('a safetensors file we write loads in load_safetensors, and saving it back is byte-identical', () => {
    const s = sample();
    assert.deepEqual(py.names, Object.keys(s).sort());
    assert.deepEqual(py.shapes, Object.fromEntries(Object.entries(s).map(([k, t]) => [k, t.shape])));
    assert.equal((py.dtypes as Record<string, string>)['conv1.weight'], '<f4');
    assert.equal((py.dtypes as Record<string, string>).i64, '<i8');
    assert.deepEqual(py.meta, META);
    assert.deepEqual(py.conv, [...(s['conv1.weight'].data as Float32Array)]);
    assert.deepEqual((py.shapes as Record<string, number[]>).scalar, []); // a 0-d tensor stays 0-d
    assert.ok(readFileSync(join(dir, 'resaved.safetensors')).equals(readFileSync(ours)), 'python re-save differs from our bytes');
  });

  test('a safetensors file written by the reference reads here', () => {
    const f = readSafetensors(join(dir, 'py.safetensors'));
    assert.ok(
      bitsEqual(
        getFloat32(f, 'x', [2, 3, 4]),
        Float32Array.from({ length: 24 }, (_, i) => i / 7),
      ),
    );
    assert.deepEqual(f.tensors.get('loss')?.shape, []); // 0-d, as numpy had it
    assert.deepEqual([...getFloat32(f, 'loss')], [1.5]);
    assert.deepEqual(f.tensors.get('i')?.data, new BigInt64Array([-3n, 4n]));
    assert.deepEqual(f.metadata, { seed: '5' });
  });

  test(".npy: ours loads in numpy, numpy's loads here", () => {
    assert.deepEqual(py.npy, { shape: [2, 3, 4], dtype: '<f4', equal: true });
    const a = readNpy(join(dir, 'py.npy'));
    assert.deepEqual(a.shape, [2, 3, 4]);
    assert.ok(
      bitsEqual(
        a.data,
        Float32Array.from({ length: 24 }, (_, i) => i / 7),
      ),
    );
    assert.deepEqual(readNpy(join(dir, 'py_scalar.npy')), { shape: [], data: new Float32Array([2.5]) });
  });
});

// ------------------------------------------------------------------ png

describe('png', () => {
  test('grid layout, clipping, NaN, grayscale 8-bit; atomic write', async () => {
    const imgs = new Float32Array([0, 0.5, 1, 2, /* */ -1, NaN, 0.25, 1, /* */ 1, 1, 1, 1]);
    const buf = pngGrid(imgs, 3, 2, 2, { cols: 2, pad: 1, padValue: 0 });
    assert.equal(buf[25], 0, 'IHDR colour type is not grayscale');
    const png = PNG.sync.read(buf);
    assert.equal(png.width, 7);
    assert.equal(png.height, 7);
    const at = (x: number, y: number): number => png.data[(y * 7 + x) * 4];
    assert.deepEqual([at(1, 1), at(2, 1), at(1, 2), at(2, 2)], [0, 128, 255, 255]);
    assert.deepEqual([at(4, 1), at(5, 1), at(4, 2), at(5, 2)], [0, 0, 64, 255]);
    assert.deepEqual([at(1, 4), at(2, 5), at(4, 4), at(0, 0), at(3, 3)], [255, 255, 0, 0, 0]);
    assert.equal(gridPixels(new Float32Array(10 * 4), 10, 2, 2).width, 4 * 4 + 2); // default 4 columns, pad 2
    throwsOneLine(() => pngGrid(new Float32Array(5), 2, 2, 2), 'not n*h*w');
    const p = join(dir, 'grid.png');
    await writePng(p, imgs, 3, 2, 2, { cols: 2, pad: 1, padValue: 0 });
    assert.ok(readFileSync(p).equals(buf));
  });
});
