/**
 * NumPy .npy files of float32, little-endian, C order (descr '<f4'): what np.load reads
 * and np.save writes for a float32 array.
 *
 *   "\x93NUMPY" major minor   magic and version (we write 1.0; read 1.0, 2.0 and 3.0)
 *   u16 LE (v1) / u32 LE (v2+) header length
 *   header                    a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 *                             padded with spaces and a final '\n' so the data start 64-aligned
 *   data                      prod(shape) float32 values, row-major
 */
import { readFileSync } from 'node:fs';
import { writeFileAtomic, writeFileAtomicSync } from './atomic.js';
import { checkInputFile } from './limits.js';
import { fromLEBytes, toLEBytes } from './endian.js';

export interface NdArray {
  shape: number[];
  data: Float32Array;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY

function pyShape(shape: readonly number[]): string {
  return shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
}

function checkShape(shape: readonly number[], n: number, where: string): void {
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0))
    throw new Error(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  const size = shape.reduce((a, b) => a * b, 1);
  if (size !== n) throw new Error(`${where}: shape [${shape.join(',')}] needs ${size} values, data has ${n}`);
}

/** The file as [preamble+header, data] chunks (the data chunk is a view, not a copy, on LE hosts). */
export function encodeNpyChunks(a: NdArray, label = 'npy'): Uint8Array[] {
  checkShape(a.shape, a.data.length, label);
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${pyShape(a.shape)}, }`;
  // pad so that magic(6) + version(2) + length(2) + header, ending in '\n', is a multiple of 64
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = header.padEnd(total - 10 - 1, ' ') + '\n';
  if (header.length > 0xffff) throw new Error(`${label}: shape too long for a v1.0 .npy header`);
  const pre = Buffer.alloc(10);
  MAGIC.copy(pre, 0);
  pre[6] = 1;
  pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  return [Buffer.concat([pre, Buffer.from(header, 'latin1')]), toLEBytes(a.data)];
}

export function encodeNpy(a: NdArray): Buffer {
  return Buffer.concat(encodeNpyChunks(a));
}

export async function writeNpy(path: string, a: NdArray): Promise<void> {
  await writeFileAtomic(path, encodeNpyChunks(a, path));
}

export function writeNpySync(path: string, a: NdArray): void {
  writeFileAtomicSync(path, encodeNpyChunks(a, path));
}

/** Parse the header dict; it is a Python literal, so read the three keys we need by pattern. */
function parseHeader(text: string, src: string): { descr: string; fortran: boolean; shape: number[] } {
  const t = text.trim();
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]*)['"]/.exec(t);
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(t);
  const shape = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(t);
  if (!t.startsWith('{') || !t.endsWith('}') || !descr || !fortran || !shape) {
    throw new Error(`${src}: malformed .npy header ${JSON.stringify(t.slice(0, 120))}`);
  }
  const dims = shape[1]
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (!dims.every((d) => /^\d+L?$/.test(d))) throw new Error(`${src}: bad shape (${shape[1]}) in .npy header`);
  return { descr: descr[1], fortran: fortran[1] === 'True', shape: dims.map((d) => parseInt(d, 10)) };
}

function readPreamble(buf: Uint8Array, src: string): { header: string; dataStart: number } {
  if (buf.byteLength < 10 || !MAGIC.equals(buf.subarray(0, 6))) throw new Error(`${src}: not a .npy file (bad magic)`);
  const major = buf[6];
  if (buf[7] !== 0 || major < 1 || major > 3) throw new Error(`${src}: unsupported .npy version ${major}.${buf[7]}`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const lenBytes = major === 1 ? 2 : 4;
  if (buf.byteLength < 8 + lenBytes) throw new Error(`${src}: truncated .npy preamble`);
  const hlen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const dataStart = 8 + lenBytes + hlen;
  if (dataStart > buf.byteLength) throw new Error(`${src}: .npy header length ${hlen} runs past the file (${buf.byteLength} bytes)`);
  const header = Buffer.from(buf.buffer, buf.byteOffset + 8 + lenBytes, hlen).toString(major === 3 ? 'utf8' : 'latin1');
  return { header, dataStart };
}

/** Parse a float32 .npy held in memory; `source` names it in errors. */
export function decodeNpy(buf: Uint8Array, source = '<buffer>'): NdArray {
  const { header, dataStart } = readPreamble(buf, source);
  const h = parseHeader(header, source);
  if (h.descr !== '<f4') throw new Error(`${source}: dtype '${h.descr}' is not supported (want little-endian float32 '<f4')`);
  if (h.fortran) throw new Error(`${source}: Fortran-order arrays are not supported (save a C-contiguous array)`);
  const need = h.shape.reduce((a, b) => a * b, 1) * 4;
  const have = buf.byteLength - dataStart;
  if (have < need) throw new Error(`${source}: truncated: shape ${pyShape(h.shape)} needs ${need} data bytes, file has ${have}`);
  if (have > need) throw new Error(`${source}: ${have - need} trailing bytes after the data of shape ${pyShape(h.shape)}`);
  return { shape: h.shape, data: fromLEBytes<Float32Array>(Float32Array, buf.subarray(dataStart)) };
}

/** Node cannot hold one Buffer past 4 GiB; no image or latent file we read comes near. */
const MAX_NPY_BYTES = 2 ** 32;

export function readNpy(path: string): NdArray {
  // A regular file that fits: /dev/zero or a FIFO would be read forever. Reading, then
  // (when unaligned) copying the floats: about twice its size.
  checkInputFile(path, 'a float32 .npy file', MAX_NPY_BYTES, 2);
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return decodeNpy(buf, path);
}
