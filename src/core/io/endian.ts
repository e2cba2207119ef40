/**
 * Little-endian byte views of typed arrays. Every interchange format here (safetensors,
 * .npy '<f4') is little-endian; on a little-endian host (all that Node ships for in
 * practice) bytes are copied as they are, and a big-endian host goes through DataView.
 */
import { endianness } from 'node:os';

export const HOST_LE = endianness() === 'LE';

export type NumericArray = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array;

type Ctor = { new (n: number): NumericArray; BYTES_PER_ELEMENT: number };

function setLE(view: DataView, a: NumericArray, i: number): void {
  const o = i * a.BYTES_PER_ELEMENT;
  if (a instanceof Float32Array) view.setFloat32(o, a[i], true);
  else if (a instanceof Float64Array) view.setFloat64(o, a[i], true);
  else if (a instanceof BigInt64Array) view.setBigInt64(o, a[i], true);
  else if (a instanceof Int32Array) view.setInt32(o, a[i], true);
  else view.setUint8(o, a[i]);
}

function getLE(view: DataView, a: NumericArray, i: number): void {
  const o = i * a.BYTES_PER_ELEMENT;
  if (a instanceof Float32Array) a[i] = view.getFloat32(o, true);
  else if (a instanceof Float64Array) a[i] = view.getFloat64(o, true);
  else if (a instanceof BigInt64Array) a[i] = view.getBigInt64(o, true);
  else if (a instanceof Int32Array) a[i] = view.getInt32(o, true);
  else a[i] = view.getUint8(o);
}

/** The array's little-endian bytes (a view, not a copy, on little-endian hosts). */
export function toLEBytes(a: NumericArray): Uint8Array {
  if (HOST_LE || a.BYTES_PER_ELEMENT === 1) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.byteLength);
  const view = new DataView(out.buffer);
  for (let i = 0; i < a.length; i++) setLE(view, a, i);
  return out;
}

/** A fresh, aligned typed array from little-endian bytes (always a copy, never a view into `bytes`). */
export function fromLEBytes<T extends NumericArray>(ctor: Ctor, bytes: Uint8Array): T {
  const n = bytes.byteLength / ctor.BYTES_PER_ELEMENT;
  const out = new ctor(n) as T;
  if (HOST_LE) {
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < n; i++) getLE(view, out, i);
  return out;
}
