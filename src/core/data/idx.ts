/**
 * IDX files (the MNIST / Fashion-MNIST container):
 *
 *   u32 BE magic    0x00000803 = 2051 (unsigned bytes, 3 dims: images) or 0x00000801 = 2049 (1 dim: labels)
 *   u32 BE dims     n [, rows, cols]
 *   data            n*rows*cols unsigned bytes, row-major
 *
 * The reader checks the magic, the dimensions, and that the file holds exactly the bytes
 * the header promises. gzip is detected from the content (1f 8b), not the name, so
 * `train-images-idx3-ubyte.gz` and a decompressed copy both work.
 */
import { constants as bufferConstants } from 'node:buffer';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { availableMemory, checkInputFile, formatBytes } from '../io/limits.js';

export interface IdxImages {
  n: number;
  rows: number;
  cols: number;
  /** n*rows*cols bytes, image-major, row-major within an image. */
  pixels: Uint8Array;
  source: string;
}

export interface IdxLabels {
  n: number;
  labels: Uint8Array;
  source: string;
}

export const IDX_IMAGES_MAGIC = 2051;
export const IDX_LABELS_MAGIC = 2049;

/** No real image is larger than this many pixels; a bigger header is corrupt, not data. */
const MAX_PIXELS_PER_IMAGE = 1 << 24;
/** Node cannot hold a Buffer past 4 GiB anyway. */
const MAX_BYTES = 2 ** 32;

function readMaybeGzip(path: string): Buffer {
  // A regular file that fits: /dev/zero or a FIFO would be read forever. The bytes, then the
  // float32 images made of them: about five times its size.
  checkInputFile(path, 'an IDX file', MAX_BYTES + 16, 5);
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (buf.length < 2 || buf[0] !== 0x1f || buf[1] !== 0x8b) return buf;
  // A gzip bomb (or a huge archive) must not take the machine's memory: stop decompressing at
  // what the decoded images could occupy.
  // (zlib refuses a maxOutputLength above the largest Buffer, so that caps it too)
  const maxOutputLength = Math.max(1, Math.min(MAX_BYTES + 16, bufferConstants.MAX_LENGTH, Math.floor(availableMemory() / 5)));
  try {
    return gunzipSync(buf, { maxOutputLength });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
      throw new Error(
        `${path}: decompresses to more than ${formatBytes(maxOutputLength)}, more than memory allows for its images; wrong file?`,
      );
    }
    throw new Error(`${path}: gzip data are corrupt or truncated (${String((err as Error).message).split('\n')[0]})`);
  }
}

function magicName(m: number): string {
  if (m === IDX_IMAGES_MAGIC) return 'an IDX image file';
  if (m === IDX_LABELS_MAGIC) return 'an IDX label file';
  return 'not IDX';
}

/** Check magic and exact length; returns the dims. */
function header(buf: Uint8Array, src: string, magic: number, ndims: number): number[] {
  const head = 4 + 4 * ndims;
  const kind = magic === IDX_IMAGES_MAGIC ? 'image' : 'label';
  if (buf.byteLength < 4) throw new Error(`${src}: file too short (${buf.byteLength} bytes) for an IDX ${kind} file`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const m = view.getUint32(0, false);
  if (m !== magic)
    throw new Error(
      `${src}: magic number ${m} (0x${m.toString(16).padStart(8, '0')}, ${magicName(m)}) is not ${magic}, an IDX ${kind} file`,
    );
  if (buf.byteLength < head) throw new Error(`${src}: truncated IDX header (${buf.byteLength} of ${head} bytes)`);
  const dims = Array.from({ length: ndims }, (_, i) => view.getUint32(4 + 4 * i, false));
  if (dims.some((d) => d === 0)) throw new Error(`${src}: IDX dimensions [${dims.join(',')}] contain a zero`);
  const per = dims.slice(1).reduce((a, b) => a * b, 1);
  const need = dims[0] * per;
  if (per > MAX_PIXELS_PER_IMAGE || need > MAX_BYTES)
    throw new Error(`${src}: IDX dimensions [${dims.join(',')}] are absurd; corrupt header?`);
  const have = buf.byteLength - head;
  if (have < need) throw new Error(`${src}: truncated: header says [${dims.join(',')}] = ${need} data bytes, file has ${have}`);
  if (have > need) throw new Error(`${src}: ${have - need} trailing bytes after the [${dims.join(',')}] data`);
  return dims;
}

export function decodeIdxImages(buf: Uint8Array, source = '<buffer>'): IdxImages {
  const [n, rows, cols] = header(buf, source, IDX_IMAGES_MAGIC, 3);
  return { n, rows, cols, pixels: buf.subarray(16), source };
}

export function decodeIdxLabels(buf: Uint8Array, source = '<buffer>'): IdxLabels {
  const [n] = header(buf, source, IDX_LABELS_MAGIC, 1);
  return { n, labels: buf.subarray(8), source };
}

/** Read an IDX image file (raw or gzipped). */
export function readIdxImages(path: string): IdxImages {
  return decodeIdxImages(readMaybeGzip(path), path);
}

/** Read an IDX label file (raw or gzipped). */
export function readIdxLabels(path: string): IdxLabels {
  return decodeIdxLabels(readMaybeGzip(path), path);
}
