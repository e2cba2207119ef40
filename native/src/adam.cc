// Adam + EMA on flat float32 vectors, bit-identical to src/core/train/adam.ts.
//
// Every replica of a cluster must end a step with the same bits whichever of them ran this loop
// or the JavaScript one, so the arithmetic is the JavaScript's, operation for operation: double
// precision, each stored value rounded to float32, no fused multiply-add (this file is built with
// -ffp-contract=off and no wider target clones). Elementwise, so any split over threads gives the
// same result too.
#include "adam.h"

#include <algorithm>
#include <cmath>

namespace sf {

int64_t firstNonFinite(const float* g, int64_t from, int64_t to) {
  for (int64_t i = from; i < to; ++i) {
    if (!std::isfinite(g[i])) return i;
  }
  return -1;
}

void adamRange(const AdamScalars& a, const float* __restrict g, float* __restrict p, float* __restrict m,
               float* __restrict v, float* __restrict ema, int64_t from, int64_t to) {
  const double c1 = 1 - a.beta1, c2 = 1 - a.beta2, cd = 1 - a.decay;
  // The mean as the JavaScript takes it: sum / count in double, rounded to float32. A float32
  // division gives the same bits (count is an integer below 2^24, exact in float32, and double's
  // 53 bits are at least 2 x 24 + 2, so rounding the double quotient to float32 rounds the exact
  // one); done a block at a time apart from the update so that it vectorises (inside the update's
  // loop it would cost a fifth of the update).
  const float countf = static_cast<float>(a.count);
  constexpr int64_t kBlock = 512;
  float mean[kBlock];
  for (int64_t b = from; b < to; b += kBlock) {
    const int64_t n = std::min(kBlock, to - b);
    for (int64_t j = 0; j < n; ++j) mean[j] = g[b + j] / countf;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = b + j;
      const double gi = static_cast<double>(mean[j]) * a.scale;
      const float mi = static_cast<float>(a.beta1 * m[i] + c1 * gi);
      const float vi = static_cast<float>(a.beta2 * v[i] + c2 * gi * gi);
      m[i] = mi;
      v[i] = vi;
      const float pi = static_cast<float>(p[i] - (a.stepSize * mi) / (std::sqrt(static_cast<double>(vi)) / a.sqrtBc2 + a.eps));
      p[i] = pi;
      ema[i] = a.decay > 0 ? static_cast<float>(a.decay * ema[i] + cd * pi) : pi;
    }
  }
}

}  // namespace sf
