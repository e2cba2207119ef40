// Adam + EMA on flat float32 vectors, bit-identical to src/core/train/adam.ts.
//
// Every replica of a cluster must end a step with the same bits whichever of them ran this loop
// or the JavaScript one, so the arithmetic is the JavaScript's, operation for operation: double
// precision, each stored value rounded to float32, no fused multiply-add (this file is built with
// -ffp-contract=off and no wider target clones). Elementwise, so any split over threads gives the
// same result too.
#include "adam.h"

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
  for (int64_t i = from; i < to; ++i) {
    const double gi = static_cast<double>(g[i]) * a.scale;
    const float mi = static_cast<float>(a.beta1 * m[i] + c1 * gi);
    const float vi = static_cast<float>(a.beta2 * v[i] + c2 * gi * gi);
    m[i] = mi;
    v[i] = vi;
    const float pi = static_cast<float>(p[i] - (a.stepSize * mi) / (std::sqrt(static_cast<double>(vi)) / a.sqrtBc2 + a.eps));
    p[i] = pi;
    ema[i] = a.decay > 0 ? static_cast<float>(a.decay * ema[i] + cd * pi) : pi;
  }
}

}  // namespace sf
