/**
 * Counter-based, seedable random numbers.
 *
 * Every random quantity in scoreflow is drawn from a stream named by integers,
 * e.g. `new Rng(seed, Stream.TrainNoise, step, index)`, so that it depends only
 * on its name and never on the order in which work was scheduled, how many
 * workers there were, or which backend ran. Streams are xoshiro128** generators
 * whose 128-bit state is derived from the name with a splitmix32-style hash.
 */

/** Named stream families, so that two uses of the same seed never collide. */
export enum Stream {
  Shuffle = 1,
  TrainTime = 2,
  TrainNoise = 3,
  SamplePrior = 10,
  SampleNoise = 11,
  Dequantise = 20,
  Probe = 21,
  Init = 30,
  Test = 99,
}

function mix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

function hashKey(key: readonly number[]): number[] {
  let h = 0x9e3779b9;
  for (const k of key) {
    if (!Number.isSafeInteger(k)) throw new Error(`rng stream keys must be integers, got ${k}`);
    // fold in high and low 32 bits so that large step counters stay distinct
    h = mix32(h ^ (k >>> 0));
    h = mix32(h ^ Math.floor(k / 2 ** 32));
  }
  const s: number[] = [];
  for (let i = 0; i < 4; i++) {
    h = mix32((h + 0x9e3779b9 * (i + 1)) >>> 0);
    s.push(h);
  }
  if (!s.some((v) => v !== 0)) s[0] = 1;
  return s;
}

export class Rng {
  private s: Uint32Array;

  constructor(...key: number[]) {
    this.s = Uint32Array.from(hashKey(key));
  }

  static fromState(state: readonly number[]): Rng {
    const r = new Rng(0);
    r.s = Uint32Array.from(state);
    return r;
  }

  state(): number[] {
    return Array.from(this.s);
  }

  /** Next raw 32-bit unsigned integer (xoshiro128**). */
  nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 bits of precision. */
  uniform(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** Standard normal via Box-Muller; values come in pairs, an odd count drops the spare. */
  fillNormal(out: Float32Array | Float64Array): typeof out {
    for (let i = 0; i < out.length; i += 2) {
      const u1 = 1 - this.uniform(); // (0, 1]
      const u2 = this.uniform();
      const r = Math.sqrt(-2 * Math.log(u1));
      out[i] = r * Math.cos(2 * Math.PI * u2);
      if (i + 1 < out.length) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
    }
    return out;
  }

  normal(n: number): Float32Array {
    return this.fillNormal(new Float32Array(n)) as Float32Array;
  }

  /** Rademacher +-1. */
  rademacher(n: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.nextU32() & 1 ? 1 : -1;
    return out;
  }

  uniformArray(n: number, lo = 0, hi = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * this.uniform();
    return out;
  }

  /** Fisher-Yates permutation of 0..n-1. */
  permutation(n: number): Uint32Array {
    const p = new Uint32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = p[i];
      p[i] = p[j];
      p[j] = tmp;
    }
    return p;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
