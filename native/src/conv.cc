// The 2-D convolution ops (Conv2D, FusedConv2D and the two gradients), through oneDNN.
//
// Layout: tfjs tensors are row-major in tfjs's shape (NHWC for images). Convolutions view them as
// NCHW tensors with channels-last strides (a permute, no copy), which is the layout oneDNN
// (mkldnn) convolves natively, and view the channels-last result back as NHWC.
#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

#include "kernels.h"

namespace sf {
namespace {

// Written for libtorch 1.13 (Debian) through 2.x (PyTorch wheels): no c10::optional / c10::nullopt
// (aliases of std::optional that newer headers deprecate; 1.13's are not std's), so an absent
// bias size is a default-constructed at::OptionalIntArrayRef, which both accept.

// A tfjs NHWC tensor as NCHW (channels-last strides when the NHWC tensor is contiguous).
at::Tensor asNCHW(const at::Tensor& t) { return t.permute({0, 3, 1, 2}); }
at::Tensor asNHWC(const at::Tensor& t) { return t.permute({0, 2, 3, 1}); }
// tfjs filter [kh, kw, in, out] as PyTorch's [out, in, kh, kw], packed channels-last for oneDNN.
at::Tensor asOIHW(const at::Tensor& f) {
  return f.permute({3, 2, 0, 1}).contiguous(at::MemoryFormat::ChannelsLast);
}

struct ConvArgs {
  int64_t sh, sw, pt, pb, pl, pr, dh, dw;
  bool symmetric() const { return pt == pb && pl == pr; }
};
// Convolution parameters at I[k..k+8): strides, pads top/bottom/left/right, dilations.
ConvArgs convArgs(const State& s, int k) {
  return ConvArgs{s.i(k), s.i(k + 1), s.i(k + 2), s.i(k + 3), s.i(k + 4), s.i(k + 5), s.i(k + 6), s.i(k + 7)};
}

at::Tensor conv2d(const at::Tensor& x, const at::Tensor& filter, const ConvArgs& c) {
  at::Tensor xin = asNCHW(x);
  int64_t ph = c.pt, pw = c.pl;
  if (!c.symmetric()) {
    xin = at::constant_pad_nd(xin, {c.pl, c.pr, c.pt, c.pb});
    ph = pw = 0;
  }
  at::Tensor y = at::conv2d(xin, asOIHW(filter), {}, {c.sh, c.sw}, {ph, pw}, {c.dh, c.dw}, 1);
  return asNHWC(y);
}

}  // namespace

OpTable convOps() {
  return {
      // Conv2D: I0 x NHWC, I1 filter HWIO, I2..I9 conv args.
      {"Conv2D", [](State& s) { s.out(conv2d(s.in(0), s.in(1), convArgs(s, 2))); }},
      // FusedConv2D: as Conv2D, then I10 bias id or -1, I11 activation, I12 prelu id; F0 alpha.
      {"FusedConv2D", [](State& s) {
         at::Tensor y = conv2d(s.in(0), s.in(1), convArgs(s, 2));
         if (s.i(10) >= 0) y = y + s.in(10);
         s.out(activate(y, s.i(11), s, 12, s.f(0)));
       }},
      // Conv2DBackpropInput: I0 dy NHWC, I1 filter HWIO, I2..I9 conv args, I10..I13 x shape NHWC.
      // The gradient of a convolution with respect to its input, which is also a transposed
      // convolution: oneDNN's backward-data pass on channels-last tensors.
      {"Conv2DBackpropInput", [](State& s) {
         const ConvArgs c = convArgs(s, 2);
         const at::Tensor dy = asNCHW(s.in(0));
         const int64_t n = s.i(10), h = s.i(11), w = s.i(12), ch = s.i(13);
         const bool sym = c.symmetric();
         const int64_t hp = sym ? h : h + c.pt + c.pb, wp = sym ? w : w + c.pl + c.pr;
         // Only the input's sizes and layout matter to the backward-data pass.
         at::Tensor shapeOnly = at::empty({n, ch, hp, wp}, dy.options().memory_format(at::MemoryFormat::ChannelsLast));
         auto r = at::convolution_backward(dy, shapeOnly, asOIHW(s.in(1)), at::OptionalIntArrayRef(), {c.sh, c.sw},
                                           {sym ? c.pt : 0, sym ? c.pl : 0}, {c.dh, c.dw}, false, {0, 0}, 1,
                                           {true, false, false});
         at::Tensor dx = std::get<0>(r);
         if (!sym) dx = dx.narrow(2, c.pt, h).narrow(3, c.pl, w);
         s.out(asNHWC(dx));
       }},
      // Conv2DBackpropFilter: I0 x NHWC, I1 dy NHWC, I2..I9 conv args, I10..I13 filter shape HWIO.
      {"Conv2DBackpropFilter", [](State& s) {
         const ConvArgs c = convArgs(s, 2);
         at::Tensor x = asNCHW(s.in(0));
         const at::Tensor dy = asNCHW(s.in(1));
         int64_t ph = c.pt, pw = c.pl;
         if (!c.symmetric()) {
           x = at::constant_pad_nd(x, {c.pl, c.pr, c.pt, c.pb});
           ph = pw = 0;
         }
         const int64_t kh = s.i(10), kw = s.i(11), ci = s.i(12), co = s.i(13);
         at::Tensor shapeOnly = at::empty({co, ci, kh, kw}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
         auto r = at::convolution_backward(dy, x, shapeOnly, at::OptionalIntArrayRef(), {c.sh, c.sw}, {ph, pw}, {c.dh, c.dw},
                                           false, {0, 0}, 1, {false, true, false});
         s.out(std::get<1>(r).permute({2, 3, 1, 0}).contiguous());
       }},
  };
}

}  // namespace sf
