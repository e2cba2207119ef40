// Adam + EMA on flat float32 vectors, bit-identical to src/core/train/adam.ts; see adam.cc.
#pragma once
#include <cstdint>

namespace sf {

// count: g holds a sum over `count` samples, and the update uses its mean, each element rounded to
// float32 as a stored mean would be (count 1: g is the mean itself).
struct AdamScalars {
  double scale, beta1, beta2, stepSize, sqrtBc2, eps, decay, count;
};

// Index of the first non-finite value of g[from, to), or -1.
int64_t firstNonFinite(const float* g, int64_t from, int64_t to);

// One update of elements [from, to): m, v, p, then ema (= p when decay <= 0).
void adamRange(const AdamScalars& a, const float* g, float* p, float* m, float* v, float* ema, int64_t from,
               int64_t to);

}  // namespace sf
