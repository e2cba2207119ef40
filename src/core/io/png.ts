/**
 * Grayscale PNG grids of images (samples, data previews), like torchvision's make_grid:
 * images laid out row-major, `cols` per row, `pad` pixels of `padValue` around each.
 */
import { PNG } from 'pngjs';
import { writeFileAtomic, writeFileAtomicSync } from './atomic.js';

export interface GridOptions {
  /** Images per row; default ceil(sqrt(n)). */
  cols?: number;
  /** Border pixels between and around images; default 2. */
  pad?: number;
  /** Border intensity in [0, 1]; default 0.5 (grey, visible against both black and white digits). */
  padValue?: number;
}

function positiveInt(v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 1) throw new Error(`pngGrid: ${what} must be a positive integer, got ${v}`);
}

/** [0,1] -> 0..255, clipping; NaN becomes 0 so a diverged sample shows as black, not as an exception. */
function toByte(v: number): number {
  if (!(v > 0)) return 0;
  return v >= 1 ? 255 : Math.round(v * 255);
}

/** Lay out `n` images of h x w (row-major in `images`, values in [0,1]) as one grayscale grid. */
export function gridPixels(
  images: Float32Array,
  n: number,
  h: number,
  w: number,
  opts: GridOptions = {},
): { width: number; height: number; gray: Uint8Array } {
  positiveInt(n, 'n');
  positiveInt(h, 'h');
  positiveInt(w, 'w');
  if (images.length !== n * h * w) throw new Error(`pngGrid: ${images.length} values is not n*h*w = ${n}*${h}*${w}`);
  const cols = Math.min(opts.cols ?? Math.ceil(Math.sqrt(n)), n);
  positiveInt(cols, 'cols');
  const pad = opts.pad ?? 2;
  if (!Number.isSafeInteger(pad) || pad < 0) throw new Error(`pngGrid: pad must be a non-negative integer, got ${pad}`);
  const rows = Math.ceil(n / cols);
  const width = cols * (w + pad) + pad;
  const height = rows * (h + pad) + pad;
  const gray = new Uint8Array(width * height).fill(toByte(opts.padValue ?? 0.5));
  for (let k = 0; k < n; k++) {
    const x0 = pad + (k % cols) * (w + pad);
    const y0 = pad + Math.floor(k / cols) * (h + pad);
    for (let y = 0; y < h; y++) {
      const src = (k * h + y) * w;
      const dst = (y0 + y) * width + x0;
      for (let x = 0; x < w; x++) gray[dst + x] = toByte(images[src + x]);
    }
  }
  return { width, height, gray };
}

/** The grid as PNG file bytes (8-bit grayscale). */
export function pngGrid(images: Float32Array, n: number, h: number, w: number, opts: GridOptions = {}): Buffer {
  const { width, height, gray } = gridPixels(images, n, h, w, opts);
  // pngjs packs `data` as given when input and output colour types match (0 = grayscale, 1 byte/pixel)
  const meta = { width, height, data: Buffer.from(gray.buffer, gray.byteOffset, gray.byteLength) } as unknown as PNG;
  return PNG.sync.write(meta, { colorType: 0, inputColorType: 0, bitDepth: 8, inputHasAlpha: false });
}

/** Write a grid PNG atomically. */
export async function writePng(path: string, images: Float32Array, n: number, h: number, w: number, opts: GridOptions = {}): Promise<void> {
  await writeFileAtomic(path, pngGrid(images, n, h, w, opts));
}

export function writePngSync(path: string, images: Float32Array, n: number, h: number, w: number, opts: GridOptions = {}): void {
  writeFileAtomicSync(path, pngGrid(images, n, h, w, opts));
}
