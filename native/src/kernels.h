// The op table run(op) dispatches on (the native side of src/core/backend/torch/kernels.ts).
//
// Each op reads its arguments from s.I / s.F and writes its outputs with s.out(...). The comment
// beside each op (or group of ops) in kernels.cc, group_norm.cc and conv.cc is the one description
// of its argument slots: I<k> is s.I[k], F<k> is s.F[k]. The JS kernels fill those slots.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "tensors.h"

namespace sf {

using OpFn = void (*)(State&);
using OpTable = std::vector<std::pair<const char*, OpFn>>;

// Every op, in the order run() numbers them (ops() gives the names): kernelOps(), then
// groupNormOps(), then convOps().
const OpTable& opTable();

// Elementwise, reductions, shape and layout, linear algebra (kernels.cc).
OpTable kernelOps();
// Fused GroupNorm (+ channel shift, + swish) and its gradient (group_norm.cc).
OpTable groupNormOps();
// 2-D convolution and its gradients (conv.cc).
OpTable convOps();

// A fused op's activation (tfjs's codes: 0 linear, 1 relu, 2 relu6, 3 elu, 4 sigmoid, 5 leakyrelu,
// 6 prelu, whose weights are the tensor at slot preluIdK).
at::Tensor activate(at::Tensor y, int32_t act, const State& s, int preluIdK, double leakyAlpha);

}  // namespace sf
