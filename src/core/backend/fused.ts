/**
 * Fused ops: one op in the model, one kernel on backends that register it, and the plain tfjs
 * decomposition everywhere else (so wasm and cpu compute exactly what they always did).
 */
import * as tf from '@tensorflow/tfjs';

/** Kernel names of the fused GroupNorm block (the torch backend registers both). */
export const GROUP_NORM_ACT = 'ScoreflowGroupNormAct';
export const GROUP_NORM_ACT_GRAD = 'ScoreflowGroupNormActGrad';

export interface GroupNormActOptions {
  /** Added to the variance; default 1e-5 (PyTorch's). */
  eps?: number;
  /** Apply swish (x * sigmoid(x)) to the result; default true. */
  swish?: boolean;
}

tf.registerGradient({
  kernelName: GROUP_NORM_ACT,
  inputsToSave: ['x', 'shift', 'gamma', 'beta'],
  gradFunc: (dy, saved, attrs) => {
    const [x, shift, gamma, beta] = saved;
    const [dx, dshift, dgamma, dbeta] = tf
      .engine()
      .runKernel(GROUP_NORM_ACT_GRAD, { dy: dy as tf.Tensor, x, shift, gamma, beta }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor[];
    return { x: () => dx, shift: () => dshift, gamma: () => dgamma, beta: () => dbeta };
  },
});

/**
 * act(GroupNorm(x + shift) * gamma + beta) for NHWC x [N,H,W,C], shift [N,C] or [N,1,1,C] (or null),
 * gamma and beta [C]: the ScoreNet block after each convolution (PyTorch semantics: biased
 * variance over each group's H x W x C/G values, eps 1e-5).
 *
 * Where the backend has the fused kernel this is one kernel forward and one backward; the tfjs
 * decomposition is about 35 kernels over the full activation.
 */
export function groupNormAct(
  x: tf.Tensor4D,
  shift: tf.Tensor | null,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  groups: number,
  opts: GroupNormActOptions = {},
): tf.Tensor4D {
  const eps = opts.eps ?? 1e-5;
  const swish = opts.swish ?? true;
  const [n, h, w, c] = x.shape;
  return tf.tidy(() => {
    if (x.dtype === 'float32' && tf.getKernel(GROUP_NORM_ACT, tf.getBackend()) !== undefined) {
      const s = shift === null ? tf.zeros([n, c]) : shift.reshape([n, c]);
      return tf.engine().runKernel(GROUP_NORM_ACT, { x, shift: s, gamma, beta }, { groups, eps, swish }) as tf.Tensor4D;
    }
    const v = shift === null ? x : x.add(shift.reshape([n, 1, 1, c]));
    const g = v.reshape([n, h, w, groups, c / groups]);
    const { mean, variance } = tf.moments(g, [1, 2, 4], true);
    const z = g
      .sub(mean)
      .mul(tf.rsqrt(variance.add(eps)))
      .reshape([n, h, w, c])
      .mul(gamma)
      .add(beta);
    return (swish ? z.mul(tf.sigmoid(z)) : z) as tf.Tensor4D;
  });
}
