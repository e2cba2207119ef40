/**
 * The reference time-dependent ScoreNet (a small U-Net), written once against the tfjs API.
 *
 * Tensors are channels-last: x is [N, 28, 28, 1], t is [N]. The network predicts
 * s(x, t) ~ grad_x log p_t(x); its raw output is divided by the marginal std at t, as in the
 * reference, so that the last layer predicts -z (unit scale) rather than -z/std.
 */
import * as tf from '@tensorflow/tfjs';
import { groupNormAct } from '../backend/fused.js';
import type { SDE } from '../sde.js';
import { type ModelConfig, groupsFor } from './config.js';
import { type ParamInfo, paramInfos } from './params.js';

export type ParamTensors = Record<string, tf.Tensor>;

const swish = (x: tf.Tensor) => tf.mul(x, tf.sigmoid(x));

export class ScoreNet {
  readonly infos: ParamInfo[];
  private readonly groups: ReturnType<typeof groupsFor>;

  constructor(
    readonly config: ModelConfig,
    readonly sde: SDE,
  ) {
    this.infos = paramInfos(config);
    this.groups = groupsFor(config);
  }

  /** Upload a flat parameter vector (our layout) as one tensor per parameter. */
  tensors(flat: Float32Array): ParamTensors {
    const out: ParamTensors = {};
    for (const info of this.infos) {
      out[info.name] = tf.tensor(flat.subarray(info.offset, info.offset + info.size), info.shape, 'float32');
    }
    return out;
  }

  /** Gaussian Fourier features of t, passed through swish: [N, embedDim]. */
  private embed(p: ParamTensors, t: tf.Tensor1D): tf.Tensor2D {
    const proj = t
      .expandDims(1)
      .mul(p['embed.W'].expandDims(0))
      .mul(2 * Math.PI);
    return swish(tf.concat([tf.sin(proj), tf.cos(proj)], 1)) as tf.Tensor2D;
  }

  /** Dense(embed): a per-channel, per-sample bias [N, C]. */
  private dense(p: ParamTensors, name: string, embed: tf.Tensor2D): tf.Tensor2D {
    return tf.matMul(embed, p[`${name}.dense.weight`] as tf.Tensor2D).add(p[`${name}.dense.bias`]);
  }

  /**
   * ConvTranspose2d(k=3, padding=0) with PyTorch's output_padding: the output is
   * (in-1)*stride + 3 + outputPadding wide; the extra row/column receives no input.
   */
  private tconv(x: tf.Tensor4D, filter: tf.Tensor, stride: number, outputPadding: number): tf.Tensor4D {
    const [n, h, w] = x.shape;
    const outC = filter.shape[2] as number;
    const oh = (h - 1) * stride + 3 + outputPadding;
    const ow = (w - 1) * stride + 3 + outputPadding;
    return tf.conv2dTranspose(x, filter as tf.Tensor4D, [n, oh, ow, outC], stride, 'valid');
  }

  /** s_theta(x, t): x [N,H,W,1], t [N] -> [N,H,W,1]. Call inside tf.tidy. */
  apply(p: ParamTensors, x: tf.Tensor4D, t: tf.Tensor1D): tf.Tensor4D {
    const conv = (h: tf.Tensor4D, name: string, stride: number) => tf.conv2d(h, p[`${name}.weight`] as tf.Tensor4D, stride, 'valid');
    // swish(GroupNorm(h + Dense(embed))): one fused kernel where the backend has it
    const block = (h: tf.Tensor4D, dense: string, norm: string) =>
      groupNormAct(h, this.dense(p, dense, embed), p[`${norm}.weight`], p[`${norm}.bias`], this.groups[norm].groups);

    const embed = this.embed(p, t);
    const h1 = block(conv(x, 'conv1', 1), 'dense1', 'gnorm1');
    const h2 = block(conv(h1, 'conv2', 2), 'dense2', 'gnorm2');
    const h3 = block(conv(h2, 'conv3', 2), 'dense3', 'gnorm3');
    const h4 = block(conv(h3, 'conv4', 2), 'dense4', 'gnorm4');
    let h = block(this.tconv(h4, p['tconv4.weight'], 2, 0), 'dense5', 'tgnorm4');
    h = block(this.tconv(tf.concat([h, h3], 3), p['tconv3.weight'], 2, 1), 'dense6', 'tgnorm3');
    h = block(this.tconv(tf.concat([h, h2], 3), p['tconv2.weight'], 2, 1), 'dense7', 'tgnorm2');
    h = this.tconv(tf.concat([h, h1], 3), p['tconv1.weight'], 1, 0).add(p['tconv1.bias']);
    const std = this.sde.stdTensor(t).reshape([-1, 1, 1, 1]);
    if (this.config.precond === 'std') return h.div(std) as tf.Tensor4D;
    // edm (config.ts): s = -x/(std^2 + sd^2) + sd F / (std sqrt(std^2 + sd^2)). The skip term is the
    // score of N(0, (std^2 + sd^2) I), exact where noise dominates, so F only carries what the
    // data adds, at unit scale for every std (GroupNorm after conv1 hides the scale of x from F).
    const sd = this.config.sigmaData;
    const v = std.square().add(sd * sd);
    return h.mul(sd).div(std.mul(v.sqrt())).sub(x.div(v)) as tf.Tensor4D;
  }
}
