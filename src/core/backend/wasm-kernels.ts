/**
 * Kernels that @tensorflow/tfjs-backend-wasm (4.22) lacks but a ScoreNet training step needs.
 *
 * The only one missing is Conv2DBackpropFilter: the filter gradient of conv2d, which is also
 * the filter gradient of conv2dTranspose (tfjs implements conv2dTranspose with the
 * Conv2DBackpropInput kernel, whose filter gradient calls Conv2DBackpropFilter with x and dy
 * swapped). We build it from wasm's own XNNPACK-backed kernels, so it runs at GEMM speed.
 * We also route around a wrong-result bug of wasm's convolutions with 'same' padding.
 */
import * as tf from '@tensorflow/tfjs';
// Import for its side effect first, so that its own kernels are registered before we look.
import '@tensorflow/tfjs-backend-wasm';

const WASM = 'wasm';

type Backend = tf.KernelBackend;
type Info = tf.TensorInfo;
type Pad = tf.Conv2DBackpropFilterAttrs['pad'];

/** Calls another wasm kernel directly (kernels compose kernels; no tape, no engine scope). */
function run(name: string, backend: Backend, inputs: tf.NamedTensorInfoMap, attrs: tf.NamedAttrMap = {}): Info {
  const kernel = tf.getKernel(name, WASM);
  if (kernel === undefined) throw new Error(`wasm backend has no '${name}' kernel, needed by Conv2DBackpropFilter`);
  const out = kernel.kernelFunc({ inputs, backend, attrs });
  return Array.isArray(out) ? out[0] : out;
}

/** Releases an intermediate; refcounted, so an aliased input stays alive. */
function free(backend: Backend, ...infos: Info[]): void {
  for (const info of infos) backend.disposeData(info.dataId);
}

function shape4(info: Info): [number, number, number, number] {
  if (info.shape.length !== 4) throw new Error(`Conv2DBackpropFilter: expected a rank-4 tensor, got shape [${info.shape}]`);
  return info.shape as [number, number, number, number];
}

/**
 * dW[a,b,ci,co] = sum_{n,i,j} xpad[n, i*sh + a, j*sw + b, ci] * dy[n,i,j,co]
 *
 * Read with ci as the batch, n as the contracted channel and (i,j) as the kernel window,
 * this is a stride-1 convolution of x^T = x.transpose(3,1,2,0) [Cin,H,W,N] with the filter
 * dy^T = dy.transpose(1,2,0,3) [OH,OW,N,Cout] dilated by the forward stride; its output
 * [Cin,fh,fw,Cout] transposes to [fh,fw,Cin,Cout]. Rows/cols the forward conv never read
 * (bottom/right leftovers of a strided 'valid' conv) are sliced off; the forward padding
 * becomes explicit padding, with bottom/right sized so that exactly fh x fw outputs remain.
 */
function conv2DBackpropFilter(args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }): Info {
  const backend = args.backend as Backend;
  const { x, dy } = args.inputs as { x: Info; dy: Info };
  const attrs = args.attrs as unknown as tf.Conv2DBackpropFilterAttrs;
  if (attrs.dataFormat === 'NCHW') {
    throw new Error("wasm Conv2DBackpropFilter supports dataFormat 'NHWC' only, got 'NCHW'");
  }
  const [n, h, w, cin] = shape4(x);
  const [fh, fw, , cout] = attrs.filterShape;
  const info = tf.backend_util.computeConv2DInfo(
    [n, h, w, cin], attrs.filterShape, attrs.strides, 1, attrs.pad as Pad, attrs.dimRoundingMode);
  const [dn, oh, ow, dc] = shape4(dy);
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
  if (keepH <= 0 || keepW <= 0 || n === 0) {
    // Every window lay in the zero padding: the gradient is exactly zero.
    return run('Fill', backend, {}, { shape: [fh, fw, cin, cout], value: 0, dtype: 'float32' });
  }
  const cropped = keepH < h || keepW < w;
  const xs = cropped ? run('Slice', backend, { x }, { begin: [0, 0, 0, 0], size: [n, keepH, keepW, cin] }) : x;
  const xt = run('Transpose', backend, { x: xs }, { perm: [3, 1, 2, 0] });
  if (cropped) free(backend, xs);
  const dyt = run('Transpose', backend, { x: dy }, { perm: [1, 2, 0, 3] });
  const pad = [[0, 0], [top, needH - top - keepH], [left, needW - left - keepW], [0, 0]];
  const conv = run('Conv2D', backend, { x: xt, filter: dyt },
    { strides: [1, 1], pad, dataFormat: 'NHWC', dilations: [sh, sw] });
  free(backend, xt, dyt);
  const dW = run('Transpose', backend, { x: conv }, { perm: [1, 2, 0, 3] });
  free(backend, conv);
  return dW;
}

/**
 * tfjs-backend-wasm 4.22 hands 'same' padding to XNNPACK as its TensorFlow-SAME flag, and for
 * some shapes (a kernel 1 tall with stride 2 over an even height, or the same across the
 * width) the convolution silently returns zeros. The padding tfjs itself computes for 'same'
 * is exact, so we pass it on as explicit padding, which XNNPACK handles correctly.
 */
function withExplicitSamePadding(original: tf.KernelConfig, depthwise: boolean): tf.KernelConfig {
  const kernelFunc: tf.KernelFunc = (args) => {
    const attrs = (args.attrs ?? {}) as unknown as tf.Conv2DAttrs;
    if (attrs.pad !== 'same' || (attrs.dataFormat ?? 'NHWC') !== 'NHWC') return original.kernelFunc(args);
    const { x, filter } = args.inputs as { x: Info; filter: Info };
    const info = tf.backend_util.computeConv2DInfo(shape4(x), shape4(filter), attrs.strides, attrs.dilations ?? 1,
      'same', attrs.dimRoundingMode, depthwise);
    const { top, bottom, left, right } = info.padInfo;
    const pad = [[0, 0], [top, bottom], [left, right], [0, 0]];
    return original.kernelFunc({ ...args, attrs: { ...args.attrs, pad } });
  };
  return { ...original, kernelFunc };
}

/** Kernels we add to 'wasm' because it has none. */
const ADDED: readonly tf.KernelConfig[] = [
  { kernelName: tf.Conv2DBackpropFilter, backendName: WASM, kernelFunc: conv2DBackpropFilter as tf.KernelFunc },
];

/** wasm kernels we wrap to avoid the 'same'-padding bug, and whether each is depthwise. */
const SAME_PADDING_FIXES: ReadonlyArray<[string, boolean]> = [
  [tf.Conv2D, false], [tf.FusedConv2D, false], [tf.DepthwiseConv2dNative, true], [tf.FusedDepthwiseConv2D, true],
];

const fixed = new Set<string>();

/**
 * Adds the missing wasm kernels and wraps the faulty ones; idempotent. A kernel that a newer
 * tfjs-backend-wasm provides itself is left alone. Returns what it changed now.
 */
export function registerWasmKernels(): { added: string[]; fixed: string[] } {
  const done = { added: [] as string[], fixed: [] as string[] };
  for (const config of ADDED) {
    if (tf.getKernel(config.kernelName, WASM) !== undefined) continue;
    tf.registerKernel(config);
    done.added.push(config.kernelName);
  }
  for (const [name, depthwise] of SAME_PADDING_FIXES) {
    const original = tf.getKernel(name, WASM);
    if (original === undefined || fixed.has(name)) continue;
    // registerKernel would overwrite too, but warns; the wrapper keeps the original setupFunc,
    // which tfjs calls again each time 'wasm' becomes the active backend.
    tf.unregisterKernel(name, WASM);
    tf.registerKernel(withExplicitSamePadding(original, depthwise));
    fixed.add(name);
    done.fixed.push(name);
  }
  return done;
}

/** Kernels this module adds to wasm, and wasm kernels it wraps with a fix. */
export const wasmKernelChanges: { readonly added: readonly string[]; readonly fixed: readonly string[] } = {
  added: ADDED.map((k) => k.kernelName),
  fixed: SAME_PADDING_FIXES.map(([name]) => name),
};
