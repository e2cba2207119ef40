// Fused channels-last GroupNorm (+ channel shift, + swish) for one sample; see fused.cc.
#pragma once
#include <cstdint>

namespace sf {

// x, y: [hw, c]; shift, gamma, beta: [c]. y = act(GroupNorm_groups(x + shift) * gamma + beta).
void groupNormForward(const float* x, const float* shift, const float* gamma, const float* beta, int64_t hw,
                      int64_t c, int64_t groups, float eps, bool swish, float* y);

// Gradients of the above given dy: dx [hw, c]; dshift, dgamma, dbeta [c] (this sample's terms).
void groupNormBackward(const float* dy, const float* x, const float* shift, const float* gamma, const float* beta,
                       int64_t hw, int64_t c, int64_t groups, float eps, bool swish, float* dx, float* dshift,
                       float* dgamma, float* dbeta);

}  // namespace sf
