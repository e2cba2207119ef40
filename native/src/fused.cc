// Fused GroupNorm (+ per-sample channel shift, + swish) on channels-last float32 data, one sample
// at a time. Plain C++ without libtorch headers: it compiles in a second and vectorises across
// channels at -O3 (with an AVX2/FMA clone on x86-64 chosen at load time).
//
// With v = x + shift (per sample and channel), G groups of D = C / G channels and M = HW * D:
//   mean_g, var_g over the M values of group g;  xhat = (v - mean_g) / sqrt(var_g + eps)
//   z = xhat * gamma_c + beta_c;                 y = swish ? z * sigmoid(z) : z
// The backward pass recomputes the statistics (they are cheap next to a pass over dy) instead of
// keeping them as extra outputs tfjs would have to track.
#include "fused.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SF_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SF_CLONES
#endif

namespace sf {
namespace {

// Flush-to-zero and denormals-are-zero for the life of one call, restored after. The vectorised
// sigmoid computes both sides of its clamp in every lane, and the discarded side can be denormal,
// which costs a microcode assist per lane (a 10x slowdown); nothing here needs denormals.
class FlushDenormals {
#if defined(__SSE__)
  unsigned saved_;

 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
#endif
};

// exp(x) for x in [-87, 88], to about 1 ulp (Cephes' expf reduction and polynomial). Branch-free,
// with round-to-nearest by the 1.5 * 2^23 trick, so that loops calling it vectorise.
inline float expReduced(float x) {
  const float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const int32_t n = static_cast<int32_t>(fn);
  const float r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return e * scale;
}

// 1 / (1 + exp(-z)); beyond |z| = 87 the clamp changes the result by less than float resolution.
inline float fsigmoid(float z) {
  float t = -z;
  t = t < 87.0f ? t : 87.0f;
  t = t > -87.0f ? t : -87.0f;
  const float e = expReduced(t);
  return 1.0f / (1.0f + e);
}

// Per-channel mean and rstd of the group each channel belongs to, for one sample.
SF_CLONES
void groupStats(const float* __restrict x, const float* __restrict shift, int64_t hw, int64_t c, int64_t groups, float eps,
                float* __restrict meanC, float* __restrict rstdC, double* __restrict acc) {
  const int64_t d = c / groups;
  const double m = static_cast<double>(hw * d);
  for (int64_t j = 0; j < c; ++j) acc[j] = 0;
  for (int64_t i = 0; i < hw; ++i) {
    const float* __restrict row = x + i * c;
    for (int64_t j = 0; j < c; ++j) acc[j] += row[j];
  }
  for (int64_t g = 0; g < groups; ++g) {
    double s = 0;
    for (int64_t j = g * d; j < (g + 1) * d; ++j) s += acc[j] + static_cast<double>(shift[j]) * hw;
    const float mean = static_cast<float>(s / m);
    for (int64_t j = g * d; j < (g + 1) * d; ++j) meanC[j] = mean;
  }
  // Second pass about the mean: no cancellation.
  std::vector<float> centre(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    centre[j] = shift[j] - meanC[j];
    acc[j] = 0;
  }
  const float* __restrict ce = centre.data();
  for (int64_t i = 0; i < hw; ++i) {
    const float* __restrict row = x + i * c;
    for (int64_t j = 0; j < c; ++j) {
      const float v = row[j] + ce[j];
      acc[j] += v * v;
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    double s = 0;
    for (int64_t j = g * d; j < (g + 1) * d; ++j) s += acc[j];
    const float rstd = static_cast<float>(1.0 / std::sqrt(s / m + eps));
    for (int64_t j = g * d; j < (g + 1) * d; ++j) rstdC[j] = rstd;
  }
}

SF_CLONES
void affineSwish(const float* __restrict x, const float* __restrict a, const float* __restrict b, int64_t n, float* __restrict y) {
  for (int64_t j = 0; j < n; ++j) {
    const float z = x[j] * a[j] + b[j];
    y[j] = z * fsigmoid(z);
  }
}

SF_CLONES
void affine(const float* __restrict x, const float* __restrict a, const float* __restrict b, int64_t n, float* __restrict y) {
  for (int64_t j = 0; j < n; ++j) y[j] = x[j] * a[j] + b[j];
}

void affineOut(const float* __restrict x, const float* __restrict a, const float* __restrict b, int64_t hw, int64_t c, bool swish, float* __restrict y) {
  for (int64_t i = 0; i < hw; ++i) (swish ? affineSwish : affine)(x + i * c, a, b, c, y + i * c);
}

// One row of the backward pass: dz (= dy through the swish, if any) and the sums s1 += dz,
// s2 += dz * xhat with xhat = x * ha + hb.
SF_CLONES
void sumsSwish(const float* __restrict dy, const float* __restrict x, const float* __restrict a, const float* __restrict b, const float* __restrict ha, const float* __restrict hb,
               int64_t c, float* __restrict dz, float* __restrict s1, float* __restrict s2) {
  for (int64_t j = 0; j < c; ++j) {
    const float z = x[j] * a[j] + b[j];
    const float s = fsigmoid(z);
    const float g = dy[j] * (s * (1.0f + z * (1.0f - s)));
    dz[j] = g;
    s1[j] += g;
    s2[j] += g * (x[j] * ha[j] + hb[j]);
  }
}

SF_CLONES
void sums(const float* __restrict dy, const float* __restrict x, const float* __restrict ha, const float* __restrict hb, int64_t c, float* __restrict dz, float* __restrict s1,
          float* __restrict s2) {
  for (int64_t j = 0; j < c; ++j) {
    const float g = dy[j];
    dz[j] = g;
    s1[j] += g;
    s2[j] += g * (x[j] * ha[j] + hb[j]);
  }
}

// Row sums go to float accumulators, folded into double every `kFold` rows: vector-friendly and
// about as accurate as summing all H x W rows in double.
constexpr int64_t kFold = 64;

void backwardSums(const float* __restrict dy, const float* __restrict x, const float* __restrict a, const float* __restrict b, const float* __restrict ha, const float* __restrict hb,
                  int64_t hw, int64_t c, bool swish, float* __restrict dz, double* __restrict s1, double* __restrict s2) {
  std::vector<float> f(static_cast<size_t>(2 * c));
  float *f1 = f.data(), *f2 = f1 + c;
  for (int64_t j = 0; j < c; ++j) s1[j] = s2[j] = 0;
  for (int64_t i0 = 0; i0 < hw; i0 += kFold) {
    for (int64_t j = 0; j < c; ++j) f1[j] = f2[j] = 0;
    const int64_t i1 = i0 + kFold < hw ? i0 + kFold : hw;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t o = i * c;
      if (swish) {
        sumsSwish(dy + o, x + o, a, b, ha, hb, c, dz + o, f1, f2);
      } else {
        sums(dy + o, x + o, ha, hb, c, dz + o, f1, f2);
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      s1[j] += f1[j];
      s2[j] += f2[j];
    }
  }
}

// dx = p * dz + q * x + k in place over dz; dshift = sum over positions of dx.
SF_CLONES
void backwardOut(const float* __restrict x, const float* __restrict p, const float* __restrict q, const float* __restrict k, int64_t hw, int64_t c, float* __restrict dx,
                 double* __restrict dshift) {
  for (int64_t j = 0; j < c; ++j) dshift[j] = 0;
  for (int64_t i = 0; i < hw; ++i) {
    const float* __restrict xr = x + i * c;
    float* __restrict dr = dx + i * c;
    for (int64_t j = 0; j < c; ++j) {
      const float v = p[j] * dr[j] + q[j] * xr[j] + k[j];
      dr[j] = v;
      dshift[j] += v;
    }
  }
}

}  // namespace

void groupNormForward(const float* x, const float* shift, const float* gamma, const float* beta, int64_t hw,
                      int64_t c, int64_t groups, float eps, bool swish, float* y) {
  FlushDenormals ftz;
  std::vector<float> buf(static_cast<size_t>(4 * c));
  std::vector<double> acc(static_cast<size_t>(c));
  float *mean = buf.data(), *rstd = mean + c, *a = rstd + c, *b = a + c;
  groupStats(x, shift, hw, c, groups, eps, mean, rstd, acc.data());
  for (int64_t j = 0; j < c; ++j) {  // z = x * a + b
    a[j] = rstd[j] * gamma[j];
    b[j] = beta[j] + (shift[j] - mean[j]) * a[j];
  }
  affineOut(x, a, b, hw, c, swish, y);
}

void groupNormBackward(const float* dy, const float* x, const float* shift, const float* gamma, const float* beta,
                       int64_t hw, int64_t c, int64_t groups, float eps, bool swish, float* dx, float* dshift,
                       float* dgamma, float* dbeta) {
  FlushDenormals ftz;
  const int64_t d = c / groups;
  const double m = static_cast<double>(hw * d);
  std::vector<float> buf(static_cast<size_t>(9 * c));
  std::vector<double> acc(static_cast<size_t>(3 * c));
  float *mean = buf.data(), *rstd = mean + c, *a = rstd + c, *b = a + c, *ha = b + c, *hb = ha + c;
  float *p = hb + c, *q = p + c, *k = q + c;
  double *s1 = acc.data(), *s2 = s1 + c, *ds = s2 + c;
  groupStats(x, shift, hw, c, groups, eps, mean, rstd, ds);
  for (int64_t j = 0; j < c; ++j) {
    a[j] = rstd[j] * gamma[j];
    b[j] = beta[j] + (shift[j] - mean[j]) * a[j];
    ha[j] = rstd[j];  // xhat = x * ha + hb
    hb[j] = (shift[j] - mean[j]) * rstd[j];
  }
  backwardSums(dy, x, a, b, ha, hb, hw, c, swish, dx, s1, s2);
  for (int64_t g = 0; g < groups; ++g) {
    double A = 0, B = 0;
    for (int64_t j = g * d; j < (g + 1) * d; ++j) {
      A += gamma[j] * s1[j];
      B += gamma[j] * s2[j];
    }
    A /= m;
    B /= m;
    for (int64_t j = g * d; j < (g + 1) * d; ++j) {
      // dx = rstd * (gamma dz - A - xhat B), with xhat = x * ha + hb.
      const double r = rstd[j];
      p[j] = static_cast<float>(r * gamma[j]);
      q[j] = static_cast<float>(-r * B * ha[j]);
      k[j] = static_cast<float>(-r * A - r * B * hb[j]);
    }
  }
  for (int64_t j = 0; j < c; ++j) {
    dgamma[j] = static_cast<float>(s2[j]);
    dbeta[j] = static_cast<float>(s1[j]);
  }
  backwardOut(x, p, q, k, hw, c, dx, ds);
  for (int64_t j = 0; j < c; ++j) dshift[j] = static_cast<float>(ds[j]);
}

}  // namespace sf
