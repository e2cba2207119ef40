/**
 * Convolution kernels for tfjs-backend-wasm, built from its XNNPACK-backed Conv2D so they run
 * at GEMM speed. All are NHWC; filters are [fh, fw, Cin, Cout] as in tfjs.
 */
import * as tf from '@tensorflow/tfjs';
import { type Backend, free, type Info, type KernelArgs, run, shape4, upload, view, zeros } from './wasm-ops.js';

type Pad = tf.Conv2DBackpropFilterAttrs['pad'];

/**
 * Conv2DBackpropFilter, which wasm lacks:
 *   dW[a,b,ci,co] = sum_{n,i,j} xpad[n, i*sh + a, j*sw + b, ci] * dy[n,i,j,co]
 *
 * Read with ci as the batch, n as the contracted channel and (i,j) as the kernel window,
 * this is a stride-1 convolution of x^T = x.transpose(3,1,2,0) [Cin,H,W,N] with the filter
 * dy^T = dy.transpose(1,2,0,3) [OH,OW,N,Cout] dilated by the forward stride; its output
 * [Cin,fh,fw,Cout] transposes to [fh,fw,Cin,Cout]. Rows/cols the forward conv never read
 * (bottom/right leftovers of a strided 'valid' conv) are sliced off; the forward padding
 * becomes explicit padding, with bottom/right sized so that exactly fh x fw outputs remain.
 */
export function conv2DBackpropFilter(args: KernelArgs): Info {
  const backend = args.backend as Backend;
  const { x, dy } = args.inputs as { x: Info; dy: Info };
  const attrs = args.attrs as unknown as tf.Conv2DBackpropFilterAttrs;
  if (attrs.dataFormat === 'NCHW') {
    throw new Error("wasm Conv2DBackpropFilter supports dataFormat 'NHWC' only, got 'NCHW'");
  }
  const [n, h, w, cin] = shape4(x, 'Conv2DBackpropFilter x');
  const [fh, fw, , cout] = attrs.filterShape;
  const info = tf.backend_util.computeConv2DInfo(
    [n, h, w, cin],
    attrs.filterShape,
    attrs.strides,
    1,
    attrs.pad as Pad,
    attrs.dimRoundingMode,
  );
  const [dn, oh, ow, dc] = shape4(dy, 'Conv2DBackpropFilter dy');
  if (dn !== n || oh !== info.outHeight || ow !== info.outWidth || dc !== cout) {
    throw new Error(`Conv2DBackpropFilter: dy shape [${dy.shape}] does not match the forward output [${info.outShape}]`);
  }
  const { strideHeight: sh, strideWidth: sw } = info;
  const { top, left } = info.padInfo;
  // Padded-input extent the forward conv actually touched.
  const needH = (oh - 1) * sh + fh;
  const needW = (ow - 1) * sw + fw;
  const keepH = Math.min(h, needH - top);
  const keepW = Math.min(w, needW - left);
  // Every window lay in the zero padding: the gradient is exactly zero.
  if (keepH <= 0 || keepW <= 0 || n === 0) return zeros(backend, [fh, fw, cin, cout]);
  const cropped = keepH < h || keepW < w;
  const xs = cropped ? run('Slice', backend, { x }, { begin: [0, 0, 0, 0], size: [n, keepH, keepW, cin] }) : x;
  const xt = run('Transpose', backend, { x: xs }, { perm: [3, 1, 2, 0] });
  if (cropped) free(backend, xs);
  const dyt = run('Transpose', backend, { x: dy }, { perm: [1, 2, 0, 3] });
  const pad = [
    [0, 0],
    [top, needH - top - keepH],
    [left, needW - left - keepW],
    [0, 0],
  ];
  const conv = run('Conv2D', backend, { x: xt, filter: dyt }, { strides: [1, 1], pad, dataFormat: 'NHWC', dilations: [sh, sw] });
  free(backend, xt, dyt);
  const dW = run('Transpose', backend, { x: conv }, { perm: [1, 2, 0, 3] });
  free(backend, conv);
  return dW;
}

/**
 * One residue class of the dx index along one spatial axis, for Conv2DBackpropInput.
 * dx rows y = r + s*m (m < rows) meet only the filter taps a = p + s*k (k < taps), and
 *   dx[r + s*m] = sum_k dy[base + m - k] * W[p + s*k],   base = floor((r + pad) / s),
 * a stride-1 correlation of dy rows [lo, hi) = [base - taps + 1, base + rows) with the taps
 * reversed. Of those rows, [from, to) exist in dy; the rest become zero padding.
 */
interface Phase {
  p: number;
  taps: number;
  rows: number;
  from: number;
  to: number;
  before: number;
  after: number;
}

function phases(size: number, f: number, s: number, pad: number, dySize: number): Phase[] {
  const out: Phase[] = [];
  for (let r = 0; r < s; r++) {
    const p = (r + pad) % s;
    const taps = p < f ? Math.ceil((f - p) / s) : 0;
    const rows = Math.max(0, Math.ceil((size - r) / s));
    const base = Math.floor((r + pad) / s);
    const lo = base - taps + 1;
    const hi = base + rows;
    const from = Math.min(Math.max(lo, 0), dySize);
    const to = Math.max(Math.min(hi, dySize), from);
    out.push({ p, taps, rows, from, to, before: from - lo, after: hi - to });
  }
  return out;
}

/** Taps W[p + sh*k, q + sw*l] reversed in k and l, channels swapped: [kh, kw, Cout, Cin]. */
function subFilter(w: Float32Array, [, fw, cin, cout]: number[], rp: Phase, cp: Phase, sh: number, sw: number): Float32Array {
  const out = new Float32Array(rp.taps * cp.taps * cout * cin);
  let o = 0;
  for (let k = 0; k < rp.taps; k++) {
    const a = rp.p + sh * (rp.taps - 1 - k);
    for (let l = 0; l < cp.taps; l++) {
      const b = cp.p + sw * (cp.taps - 1 - l);
      const at = (a * fw + b) * cin * cout;
      for (let co = 0; co < cout; co++) {
        for (let ci = 0; ci < cin; ci++) out[o++] = w[at + ci * cout + co];
      }
    }
  }
  return out;
}

/** dx over one (row, column) residue class, zero-padded to [n, mh, mw, cin]. */
function phaseBlock(
  backend: Backend,
  dy: Info,
  w: Float32Array,
  wShape: number[],
  rp: Phase,
  cp: Phase,
  strides: [number, number],
  block: number[],
): Info {
  const [n, oh, ow, cout] = dy.shape;
  const cin = wShape[2];
  if (rp.taps === 0 || cp.taps === 0 || rp.rows === 0 || cp.rows === 0 || rp.to === rp.from || cp.to === cp.from) {
    return zeros(backend, block);
  }
  const crop = rp.from > 0 || rp.to < oh || cp.from > 0 || cp.to < ow;
  const dys = crop
    ? run('Slice', backend, { x: dy }, { begin: [0, rp.from, cp.from, 0], size: [n, rp.to - rp.from, cp.to - cp.from, cout] })
    : dy;
  const filter = upload(backend, [rp.taps, cp.taps, cout, cin], subFilter(w, wShape, rp, cp, ...strides));
  const pad = [
    [0, 0],
    [rp.before, rp.after],
    [cp.before, cp.after],
    [0, 0],
  ];
  const conv = run('Conv2D', backend, { x: dys, filter }, { strides: [1, 1], pad, dataFormat: 'NHWC', dilations: [1, 1] });
  free(backend, filter, ...(crop ? [dys] : []));
  if (rp.rows === block[1] && cp.rows === block[2]) return conv;
  const padded = run(
    'PadV2',
    backend,
    { x: conv },
    {
      paddings: [
        [0, 0],
        [0, block[1] - rp.rows],
        [0, block[2] - cp.rows],
        [0, 0],
      ],
      constantValue: 0,
    },
  );
  free(backend, conv);
  return padded;
}

/**
 * Conv2DBackpropInput (the input gradient of conv2d, and conv2dTranspose itself). The stock
 * wasm kernel is a plain C++ loop, about ten times slower than XNNPACK's convolution, and it
 * is the largest cost of a ScoreNet training step. We split dx by the residue of (row, col)
 * modulo the stride: each residue class is a stride-1 convolution of dy with a sub-filter
 * (see Phase), and the classes are interleaved back by concatenation. Every multiply-add
 * done is a useful one (no zero-stuffing of dy).
 */
export function conv2DBackpropInputVia(stock: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const attrs = args.attrs as unknown as tf.Conv2DBackpropInputAttrs;
    if (attrs.dataFormat === 'NCHW') return stock(args);
    return conv2DBackpropInput(args as KernelArgs);
  };
}

function conv2DBackpropInput(args: KernelArgs): Info {
  const backend = args.backend as Backend;
  const { dy, filter } = args.inputs as { dy: Info; filter: Info };
  const attrs = args.attrs as unknown as tf.Conv2DBackpropInputAttrs;
  const inShape = shape4(attrs.inputShape, 'Conv2DBackpropInput inputShape');
  const wShape = shape4(filter, 'Conv2DBackpropInput filter');
  const info = tf.backend_util.computeConv2DInfo(inShape, wShape, attrs.strides, 1, attrs.pad as Pad, attrs.dimRoundingMode);
  const [n, oh, ow] = shape4(dy, 'Conv2DBackpropInput dy');
  if (n !== inShape[0] || oh !== info.outHeight || ow !== info.outWidth || dy.shape[3] !== wShape[3]) {
    throw new Error(`Conv2DBackpropInput: dy shape [${dy.shape}] does not match the forward output [${info.outShape}]`);
  }
  const [, h, w, cin] = inShape;
  const { strideHeight: sh, strideWidth: sw } = info;
  const rows = phases(h, wShape[0], sh, info.padInfo.top, oh);
  const cols = phases(w, wShape[1], sw, info.padInfo.left, ow);
  const mh = Math.ceil(h / sh);
  const mw = Math.ceil(w / sw);
  const weights = backend.readSync(filter.dataId) as Float32Array;
  // Interleave by concatenation along a new axis next to the one being woven:
  // [..., m, 1, ...] stacked over the residues is [..., m, s, ...], i.e. index m*s + r.
  const woven = rows.map((rp) => {
    const blocks = cols.map((cp) => phaseBlock(backend, dy, weights, wShape, rp, cp, [sh, sw], [n, mh, mw, cin]));
    return weave(backend, blocks, 3, [n, mh, mw * sw, cin]);
  });
  const full = weave(backend, woven, 2, [n, mh * sh, mw * sw, cin]);
  if (mh * sh === h && mw * sw === w) return full;
  const dx = run('Slice', backend, { x: full }, { begin: [0, 0, 0, 0], size: [n, h, w, cin] });
  free(backend, full);
  return dx;
}

/** Concatenates 4-D `parts` along a new axis inserted at `axis`, seen as shape `out`. */
function weave(backend: Backend, parts: Info[], axis: number, out: number[]): Info {
  if (parts.length === 1) return parts[0];
  const views = parts.map((b) => view(b, [...b.shape.slice(0, axis), 1, ...b.shape.slice(axis)]));
  const joined = run('Concat', backend, views, { axis });
  free(backend, ...parts);
  return view(joined, out);
}

/**
 * tfjs-backend-wasm 4.22 hands 'same' padding to XNNPACK as its TensorFlow-SAME flag, and for
 * some shapes (a kernel 1 tall with stride 2 over an even height, or the same across the
 * width) the convolution silently returns zeros. The padding tfjs itself computes for 'same'
 * is exact, so we pass it on as explicit padding, which XNNPACK handles correctly.
 */
export function withExplicitSamePadding(original: tf.KernelFunc, depthwise: boolean): tf.KernelFunc {
  return (args) => {
    const attrs = (args.attrs ?? {}) as unknown as tf.Conv2DAttrs;
    if (attrs.pad !== 'same' || (attrs.dataFormat ?? 'NHWC') !== 'NHWC') return original(args);
    const { x, filter } = args.inputs as { x: Info; filter: Info };
    const info = tf.backend_util.computeConv2DInfo(
      shape4(x, 'conv x'),
      shape4(filter, 'conv filter'),
      attrs.strides,
      attrs.dilations ?? 1,
      'same',
      attrs.dimRoundingMode,
      depthwise,
    );
    const { top, bottom, left, right } = info.padInfo;
    const pad = [
      [0, 0],
      [top, bottom],
      [left, right],
      [0, 0],
    ];
    return original({ ...args, attrs: { ...args.attrs, pad } });
  };
}
