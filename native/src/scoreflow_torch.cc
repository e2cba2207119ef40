// scoreflow_torch: the native half of the `torch` tfjs backend.
//
// Tensors live in libtorch and are named by small integer ids (slots in a per-thread table).
// The JS half (src/core/backend/torch/) writes a kernel's arguments into one shared
// Int32Array/Float64Array pair and calls run(opIndex); the op reads its inputs from there and
// writes every output's id, dtype and shape back into the output area of the same buffer. So a
// kernel call crosses the boundary with one number in, one number out, and no JS objects made.
// Which slot holds what is described here only, beside each op in opTable(); the JS kernels
// (src/core/backend/torch/kernels.ts) fill the slots and refer here.
//
// Layout: tfjs tensors are row-major in tfjs's shape (NHWC for images). Convolutions view them as
// NCHW tensors with channels-last strides (a permute, no copy), which is the layout oneDNN
// (mkldnn) convolves natively, and view the channels-last result back as NHWC.

#include <node_api.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "adam.h"
#include "c10d.h"
#include "fused.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

// ---------------------------------------------------------------- shared argument buffer
// Int32 slots [0, kOut) are arguments; [kOut, kInts) receive outputs. Float64 slots follow.
constexpr int kInts = 2048;
constexpr int kOut = 1024;
constexpr int kFloats = 64;
constexpr size_t kBufBytes = kInts * 4 + kFloats * 8;

enum DType : int32_t { kF32 = 0, kI32 = 1, kBool = 2 };

at::ScalarType scalarOf(int32_t d) {
  switch (d) {
    case kF32: return at::kFloat;
    case kI32: return at::kInt;
    case kBool: return at::kBool;
  }
  throw std::runtime_error("unknown dtype code " + std::to_string(d));
}

int32_t codeOf(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return kF32;
    case at::kInt: return kI32;
    case at::kBool: return kBool;
    default: throw std::runtime_error(std::string("unsupported result dtype ") + c10::toString(s));
  }
}

// tfjs knows float32, int32 and bool only: whatever ATen returns is brought back to those.
at::Tensor normalise(at::Tensor t) {
  const auto s = t.scalar_type();
  if (s == at::kFloat || s == at::kInt || s == at::kBool) return t;
  if (at::isFloatingType(s)) return t.to(at::kFloat);
  if (at::isIntegralType(s, /*includeBool=*/false)) return t.to(at::kInt);
  throw std::runtime_error(std::string("unsupported result dtype ") + c10::toString(s));
}

struct State;
using OpFn = void (*)(State&);

struct State {
  std::vector<at::Tensor> slots;
  std::vector<int32_t> freeIds;
  int64_t live = 0;
  int32_t* I = nullptr;
  double* F = nullptr;
  napi_ref bufRef = nullptr;
  c10::Device device{c10::kCPU};
  int outPos = 0;   // next free int in the output area
  int outCount = 0; // outputs written by the current op

  at::TensorOptions opts(at::ScalarType s) const { return at::TensorOptions().dtype(s).device(device); }

  int32_t put(at::Tensor t) {
    t = normalise(std::move(t));
    int32_t id;
    if (!freeIds.empty()) {
      id = freeIds.back();
      freeIds.pop_back();
      slots[id] = std::move(t);
    } else {
      id = static_cast<int32_t>(slots.size());
      slots.push_back(std::move(t));
    }
    ++live;
    return id;
  }

  const at::Tensor& get(int32_t id) const {
    if (id < 0 || id >= static_cast<int32_t>(slots.size()) || !slots[id].defined()) {
      throw std::runtime_error("tensor id " + std::to_string(id) + " is not live");
    }
    return slots[id];
  }

  void release(int32_t id) {
    if (id < 0 || id >= static_cast<int32_t>(slots.size()) || !slots[id].defined()) return;
    slots[id].reset();
    freeIds.push_back(id);
    --live;
  }

  // Argument accessors.
  int32_t i(int k) const { return I[k]; }
  double f(int k) const { return F[k]; }
  const at::Tensor& in(int k) const { return get(I[k]); }
  std::vector<int64_t> ints(int start, int n) const {
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (int j = 0; j < n; ++j) v[j] = I[start + j];
    return v;
  }

  // Appends one output: [id, dtype, ndim, dims...] at the output cursor.
  void out(at::Tensor t) {
    const int32_t id = put(std::move(t));
    const at::Tensor& s = slots[id];
    const int64_t nd = s.dim();
    if (outPos + 3 + nd >= kInts) throw std::runtime_error("too many outputs for the argument buffer");
    I[outPos++] = id;
    I[outPos++] = codeOf(s.scalar_type());
    I[outPos++] = static_cast<int32_t>(nd);
    for (int64_t d = 0; d < nd; ++d) I[outPos++] = static_cast<int32_t>(s.size(d));
    ++outCount;
  }
  // An output whose dtype tfjs fixes (code < 0: keep what ATen gave, after normalise).
  void outAs(at::Tensor t, int32_t code) {
    if (code >= 0 && t.scalar_type() != scalarOf(code)) t = t.to(scalarOf(code));
    out(std::move(t));
  }
};

// ---------------------------------------------------------------- N-API helpers
struct JsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string firstLine(const std::string& s) {
  const auto p = s.find('\n');
  return p == std::string::npos ? s : s.substr(0, p);
}

#define NAPI_OK(call)                                                        \
  do {                                                                       \
    if ((call) != napi_ok) throw JsError("N-API call failed: " #call);       \
  } while (0)

template <typename Fn>
napi_value guarded(napi_env env, const char* what, Fn&& fn) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    napi_throw_error(env, nullptr, (std::string(what) + ": " + firstLine(e.what_without_backtrace())).c_str());
  } catch (const std::exception& e) {
    napi_throw_error(env, nullptr, (std::string(what) + ": " + firstLine(e.what())).c_str());
  }
  return nullptr;
}

State* stateOf(napi_env env, napi_callback_info info, size_t* argc, napi_value* argv) {
  void* data = nullptr;
  NAPI_OK(napi_get_cb_info(env, info, argc, argv, nullptr, &data));
  return static_cast<State*>(data);
}

int32_t argInt(napi_env env, napi_value v) {
  int32_t r = 0;
  NAPI_OK(napi_get_value_int32(env, v, &r));
  return r;
}

napi_value num(napi_env env, double v) {
  napi_value r;
  NAPI_OK(napi_create_double(env, v, &r));
  return r;
}

// ---------------------------------------------------------------- convolution helpers
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

at::Tensor activate(at::Tensor y, int32_t act, const State& s, int preluIdK, double leakyAlpha) {
  switch (act) {
    case 0: return y;                                 // linear
    case 1: return at::relu(y);                       // relu
    case 2: return at::clamp(y, 0, 6);                // relu6
    case 3: return at::elu(y);                        // elu
    case 4: return at::sigmoid(y);                    // sigmoid
    case 5: return at::leaky_relu(y, leakyAlpha);     // leakyrelu
    case 6: {                                         // prelu
      const at::Tensor& a = s.in(preluIdK);
      return at::where(y > 0, y, y * a);
    }
  }
  throw std::runtime_error("unknown fused activation " + std::to_string(act));
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

// ---------------------------------------------------------------- fused GroupNorm (+ shift, + swish)
// y = act(GroupNorm(x + shift) * gamma + beta) over NHWC x, shift [N, C], gamma and beta [C].
// On CPU float32 the loops in fused.cc run one sample per task; elsewhere (CUDA) the same maths in
// ATen ops. Both compute the statistics in two passes, about the mean.
struct GroupNormArgs {
  int64_t n, hw, c, groups;
  double eps;
  bool swish;
};

bool fastPath(const at::Tensor& x, bool forceAten) {
  return !forceAten && x.device().is_cpu() && x.scalar_type() == at::kFloat;
}

std::vector<at::Tensor> groupNormAten(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& gamma,
                                      const at::Tensor& beta, const GroupNormArgs& g, const at::Tensor* dy) {
  const int64_t d = g.c / g.groups;
  at::Tensor v = (x + shift.reshape({g.n, 1, 1, g.c})).reshape({g.n, g.hw, g.groups, d});
  at::Tensor mean = v.mean({1, 3}, true);
  at::Tensor centred = v - mean;
  at::Tensor rstd = at::rsqrt(centred.square().mean({1, 3}, true) + g.eps);
  at::Tensor xhat = centred * rstd;
  at::Tensor z = xhat.reshape({g.n, g.hw, g.c}) * gamma + beta;
  if (dy == nullptr) {
    at::Tensor y = g.swish ? z * at::sigmoid(z) : z;
    return {y.reshape(x.sizes())};
  }
  at::Tensor dz = dy->reshape({g.n, g.hw, g.c});
  if (g.swish) {
    at::Tensor s = at::sigmoid(z);
    dz = dz * (s * (1 + z * (1 - s)));
  }
  at::Tensor xh = xhat.reshape({g.n, g.hw, g.c});
  at::Tensor dgamma = (dz * xh).sum(at::IntArrayRef{0, 1});
  at::Tensor dbeta = dz.sum(at::IntArrayRef{0, 1});
  at::Tensor gz = (dz * gamma).reshape({g.n, g.hw, g.groups, d});
  at::Tensor dx = rstd * (gz - gz.mean({1, 3}, true) - xhat * (gz * xhat).mean({1, 3}, true));
  dx = dx.reshape({g.n, g.hw, g.c});
  return {dx.reshape(x.sizes()), dx.sum({1}), dgamma, dbeta};
}

GroupNormArgs groupNormArgs(const at::Tensor& x, int64_t groups, double eps, bool swish) {
  if (x.dim() != 4) throw std::runtime_error("x must be NHWC (rank 4)");
  GroupNormArgs g{x.size(0), x.size(1) * x.size(2), x.size(3), groups, eps, swish};
  if (groups < 1 || g.c % groups != 0) {
    throw std::runtime_error(std::to_string(g.c) + " channels do not split into " + std::to_string(groups) + " groups");
  }
  return g;
}

// ---------------------------------------------------------------- the ops
// Each op reads its arguments from s.I / s.F and writes its outputs with s.out(...). The comment
// beside each op (or group of ops) is the one description of its argument slots: I<k> is s.I[k],
// F<k> is s.F[k].

#define UNARY(NAME, EXPR)                       \
  {NAME, [](State& s) {                         \
     const at::Tensor& x = s.in(0);             \
     s.outAs(EXPR, s.i(1));                     \
   }}
#define BINARY(NAME, EXPR)                      \
  {NAME, [](State& s) {                         \
     const at::Tensor& a = s.in(0);             \
     const at::Tensor& b = s.in(1);             \
     s.outAs(EXPR, s.i(2));                     \
   }}

// Reductions: I0 x, I1 out dtype, I2 keepDims, I3 n axes, I4.. axes.
template <typename Fn>
void reduce(State& s, Fn&& fn) {
  const at::Tensor& x = s.in(0);
  const int n = s.i(3);
  if (n == 0) {
    s.outAs(x, s.i(1));
    return;
  }
  s.outAs(fn(x, s.ints(4, n), s.i(2) != 0), s.i(1));
}

// Reduces one axis at a time, highest first, for ATen ops that take a single dim.
template <typename Fn>
at::Tensor eachAxis(at::Tensor x, std::vector<int64_t> axes, bool keep, Fn&& fn) {
  std::sort(axes.begin(), axes.end(), std::greater<int64_t>());
  for (int64_t a : axes) x = fn(x, a, keep);
  return x;
}

// Inclusive or exclusive, forward or reversed cumulative sum/product along one axis.
void cumulative(State& s, bool product) {
  at::Tensor x = s.in(0);
  const int64_t axis = s.i(1);
  const bool exclusive = s.i(2) != 0, reverse = s.i(3) != 0;
  if (reverse) x = x.flip({axis});
  if (exclusive && x.size(axis) > 0) {
    // Shift by one along the axis, bringing in the identity element.
    std::vector<int64_t> pad(static_cast<size_t>(2 * (x.dim() - axis)), 0);
    pad[pad.size() - 2] = 1;
    pad[pad.size() - 1] = -1;
    x = at::constant_pad_nd(x, pad, product ? 1 : 0);
  }
  at::Tensor y = product ? at::cumprod(x, axis) : at::cumsum(x, axis);
  if (reverse) y = y.flip({axis});
  s.outAs(y, s.i(4));
}

const std::vector<std::pair<const char*, OpFn>>& opTable() {
  static const std::vector<std::pair<const char*, OpFn>> table = {
      // ---- unary: I0 x, I1 out dtype
      UNARY("Neg", at::neg(x)),
      UNARY("Square", at::square(x)),
      UNARY("Sqrt", at::sqrt(x)),
      UNARY("Rsqrt", at::rsqrt(x)),
      UNARY("Exp", at::exp(x)),
      UNARY("Log", at::log(x)),
      UNARY("Sin", at::sin(x)),
      UNARY("Cos", at::cos(x)),
      UNARY("Tan", at::tan(x)),
      UNARY("Asin", at::asin(x)),
      UNARY("Acos", at::acos(x)),
      UNARY("Atan", at::atan(x)),
      UNARY("Sinh", at::sinh(x)),
      UNARY("Cosh", at::cosh(x)),
      UNARY("Asinh", at::asinh(x)),
      UNARY("Acosh", at::acosh(x)),
      UNARY("Atanh", at::atanh(x)),
      UNARY("Sigmoid", at::sigmoid(x)),
      UNARY("Tanh", at::tanh(x)),
      UNARY("Relu", at::relu(x)),
      UNARY("Relu6", at::clamp(x, 0, 6)),
      UNARY("Abs", at::abs(x)),
      UNARY("Sign", at::sign(x)),
      UNARY("Reciprocal", at::reciprocal(x)),
      UNARY("Expm1", at::expm1(x)),
      UNARY("Log1p", at::log1p(x)),
      UNARY("Softplus", at::softplus(x, 1, 20)),
      UNARY("Floor", at::floor(x)),
      UNARY("Ceil", at::ceil(x)),
      UNARY("Round", at::round(x)),
      UNARY("Erf", at::erf(x)),
      UNARY("Elu", at::elu(x)),
      UNARY("Selu", at::selu(x)),
      UNARY("IsNan", at::isnan(x)),
      UNARY("IsInf", at::isinf(x)),
      UNARY("IsFinite", at::isfinite(x)),
      UNARY("LogicalNot", at::logical_not(x)),
      UNARY("ZerosLike", at::zeros_like(x)),
      UNARY("OnesLike", at::ones_like(x)),
      UNARY("Cast", x),  // the cast is outAs's
      // Step: 1 where x > 0, alpha elsewhere, NaN stays NaN. F0 alpha.
      UNARY("Step", at::where(at::isnan(x), x, at::where(x > 0, at::ones_like(x), at::full_like(x, s.f(0))))),
      UNARY("LeakyRelu", at::leaky_relu(x, s.f(0))),
      // ClipByValue: F0 min, F1 max.
      UNARY("ClipByValue", at::clamp(x, s.f(0), s.f(1))),

      // ---- binary (broadcasting): I0 a, I1 b, I2 out dtype
      BINARY("Add", at::add(a, b)),
      BINARY("Sub", at::sub(a, b)),
      BINARY("Mul", at::mul(a, b)),
      BINARY("RealDiv", at::div(a, b)),
      BINARY("FloorDiv", at::div(a, b, "floor")),
      BINARY("Mod", at::remainder(a, b)),
      BINARY("Maximum", at::maximum(a, b)),
      BINARY("Minimum", at::minimum(a, b)),
      BINARY("Pow", at::pow(a, b)),
      BINARY("SquaredDifference", at::square(at::sub(a, b))),
      BINARY("Atan2", at::atan2(a, b)),
      BINARY("Greater", at::gt(a, b)),
      BINARY("GreaterEqual", at::ge(a, b)),
      BINARY("Less", at::lt(a, b)),
      BINARY("LessEqual", at::le(a, b)),
      BINARY("Equal", at::eq(a, b)),
      BINARY("NotEqual", at::ne(a, b)),
      BINARY("LogicalAnd", at::logical_and(a, b)),
      BINARY("LogicalOr", at::logical_or(a, b)),
      BINARY("Prelu", at::where(a > 0, a, a * b)),

      // EluGrad: I0 dy, I1 y (the Elu output), I2 out dtype.
      {"EluGrad", [](State& s) {
         const at::Tensor& dy = s.in(0);
         const at::Tensor& y = s.in(1);
         s.outAs(at::where(y >= 0, dy, dy * (y + 1)), s.i(2));
       }},
      // Cumsum / Cumprod: I0 x, I1 axis, I2 exclusive, I3 reverse, I4 out dtype.
      {"Cumsum", [](State& s) { cumulative(s, false); }},
      {"Cumprod", [](State& s) { cumulative(s, true); }},
      // LinSpace: I0 count; F0 start, F1 stop.
      {"LinSpace", [](State& s) {
         s.out(at::linspace(s.f(0), s.f(1), s.i(0), s.opts(at::kDouble)).to(at::kFloat));
       }},

      // ---- reductions: I0 x, I1 out dtype, I2 keepDims, I3 n, I4.. axes
      {"Sum", [](State& s) { reduce(s, [](const at::Tensor& x, std::vector<int64_t> ax, bool k) {
         return at::sum(x, ax, k); }); }},
      {"Mean", [](State& s) { reduce(s, [](const at::Tensor& x, std::vector<int64_t> ax, bool k) {
         return at::mean(x.is_floating_point() ? x : x.to(at::kFloat), ax, k); }); }},
      {"Max", [](State& s) { reduce(s, [](const at::Tensor& x, std::vector<int64_t> ax, bool k) {
         return at::amax(x, ax, k); }); }},
      {"Min", [](State& s) { reduce(s, [](const at::Tensor& x, std::vector<int64_t> ax, bool k) {
         return at::amin(x, ax, k); }); }},
      {"Prod", [](State& s) { reduce(s, [](const at::Tensor& x, std::vector<int64_t> ax, bool k) {
         return eachAxis(x, std::move(ax), k, [](const at::Tensor& t, int64_t a, bool kk) {
           return at::prod(t, a, kk); }); }); }},
      {"All", [](State& s) { reduce(s, [](const at::Tensor& x, std::vector<int64_t> ax, bool k) {
         return eachAxis(x, std::move(ax), k, [](const at::Tensor& t, int64_t a, bool kk) {
           return at::all(t, a, kk); }); }); }},
      {"Any", [](State& s) { reduce(s, [](const at::Tensor& x, std::vector<int64_t> ax, bool k) {
         return eachAxis(x, std::move(ax), k, [](const at::Tensor& t, int64_t a, bool kk) {
           return at::any(t, a, kk); }); }); }},
      // ArgMax/ArgMin: I0 x, I1 axis.
      {"ArgMax", [](State& s) { s.outAs(at::argmax(s.in(0), s.i(1), false), kI32); }},
      {"ArgMin", [](State& s) { s.outAs(at::argmin(s.in(0), s.i(1), false), kI32); }},
      // Softmax: I0 logits, I1 dim.
      {"Softmax", [](State& s) { s.out(at::softmax(s.in(0), s.i(1))); }},

      // ---- shape and layout (views where ATen can)
      // Identity: I0 x. Another name for the same libtorch tensor.
      {"Identity", [](State& s) { s.out(s.in(0)); }},
      // Reshape: I0 x, I1 ndim, I2.. shape.
      {"Reshape", [](State& s) { s.out(s.in(0).reshape(s.ints(2, s.i(1)))); }},
      // Transpose: I0 x, I1 ndim, I2.. perm.
      {"Transpose", [](State& s) { s.out(s.in(0).permute(s.ints(2, s.i(1)))); }},
      // BroadcastTo: I0 x, I1 ndim, I2.. shape.
      {"BroadcastTo", [](State& s) { s.out(s.in(0).expand(s.ints(2, s.i(1)))); }},
      // Reverse: I0 x, I1 n, I2.. dims.
      {"Reverse", [](State& s) { s.out(at::flip(s.in(0), s.ints(2, s.i(1)))); }},
      // Slice: I0 x, I1 ndim, I2.. begin[ndim], then size[ndim].
      {"Slice", [](State& s) {
         at::Tensor x = s.in(0);
         const int nd = s.i(1);
         for (int d = 0; d < nd; ++d) {
           const int64_t b = s.i(2 + d), n = s.i(2 + nd + d);
           if (b != 0 || n != x.size(d)) x = x.narrow(d, b, n);
         }
         s.out(x);
       }},
      // StridedSlice, after tfjs's slice_util.sliceInfo: I0 x, I1 ndim, then per dim
      // (begin, stride, count) at I2 + 3d, then I2 + 3 ndim: final rank, final shape.
      {"StridedSlice", [](State& s) {
         at::Tensor x = s.in(0);
         const int nd = s.i(1);
         for (int d = 0; d < nd; ++d) {
           const int64_t b = s.i(2 + 3 * d), st = s.i(3 + 3 * d), n = s.i(4 + 3 * d);
           const int64_t len = x.size(d);
           if (n <= 0) {
             x = x.narrow(d, 0, 0);
           } else if (st > 0) {
             if (!(b == 0 && st == 1 && n == len)) x = x.slice(d, b, b + (n - 1) * st + 1, st);
           } else {  // walk a reversed copy forwards
             const int64_t rb = len - 1 - b;
             x = x.flip({d}).slice(d, rb, rb + (n - 1) * (-st) + 1, -st);
           }
         }
         const int k = 2 + 3 * nd;
         s.out(x.reshape(s.ints(k + 1, s.i(k))));
       }},
      // Concat: I0 axis, I1 n, I2.. ids.
      {"Concat", [](State& s) {
         const int n = s.i(1);
         std::vector<at::Tensor> ts;
         ts.reserve(n);
         for (int j = 0; j < n; ++j) ts.push_back(s.in(2 + j));
         s.out(n == 1 ? ts[0] : at::cat(ts, s.i(0)));
       }},
      // Pack: I0 axis, I1 n, I2.. ids.
      {"Pack", [](State& s) {
         const int n = s.i(1);
         std::vector<at::Tensor> ts;
         ts.reserve(n);
         for (int j = 0; j < n; ++j) ts.push_back(s.in(2 + j));
         s.out(at::stack(ts, s.i(0)));
       }},
      // Unpack: I0 x, I1 axis; one output per slice.
      {"Unpack", [](State& s) {
         for (auto& t : at::unbind(s.in(0), s.i(1))) s.out(t);
       }},
      // SplitV: I0 x, I1 axis, I2 n, I3.. sizes.
      {"SplitV", [](State& s) {
         for (auto& t : at::split_with_sizes(s.in(0), s.ints(3, s.i(2)), s.i(1))) s.out(t);
       }},
      // PadV2: I0 x, I1 ndim, I2.. (before, after) per dim; F0 value.
      {"PadV2", [](State& s) {
         const int nd = s.i(1);
         std::vector<int64_t> pad(static_cast<size_t>(2 * nd));
         for (int d = 0; d < nd; ++d) {  // ATen lists the last dim first
           pad[2 * (nd - 1 - d)] = s.i(2 + 2 * d);
           pad[2 * (nd - 1 - d) + 1] = s.i(3 + 2 * d);
         }
         s.out(at::constant_pad_nd(s.in(0), pad, s.f(0)));
       }},
      // Tile: I0 x, I1 ndim, I2.. reps.
      {"Tile", [](State& s) { s.out(s.in(0).repeat(s.ints(2, s.i(1)))); }},
      // Fill: I0 dtype, I1 ndim, I2.. shape; F0 value.
      {"Fill", [](State& s) { s.out(at::full(s.ints(2, s.i(1)), s.f(0), s.opts(scalarOf(s.i(0))))); }},
      // Range: I0 dtype, I1 count; F0 start, F1 step.
      {"Range", [](State& s) {
         at::Tensor r = at::arange(static_cast<int64_t>(s.i(1)), s.opts(at::kDouble)) * s.f(1) + s.f(0);
         s.outAs(r, s.i(0));
       }},
      // Select: I0 condition, I1 t, I2 e (a rank-1 condition picks rows).
      {"Select", [](State& s) {
         at::Tensor c = s.in(0);
         const at::Tensor& a = s.in(1);
         if (c.dim() == 1 && a.dim() > 1) {
           std::vector<int64_t> shape(static_cast<size_t>(a.dim()), 1);
           shape[0] = c.size(0);
           c = c.reshape(shape);
         }
         s.out(at::where(c.to(at::kBool), a, s.in(2)));
       }},
      // GatherV2: I0 x, I1 indices, I2 axis (batchDims 0).
      {"GatherV2", [](State& s) {
         const at::Tensor& x = s.in(0);
         const at::Tensor& idx = s.in(1);
         const int64_t axis = s.i(2);
         at::Tensor g = at::index_select(x, axis, idx.reshape({-1}).to(at::kLong));
         std::vector<int64_t> shape(x.sizes().begin(), x.sizes().begin() + axis);
         for (auto d : idx.sizes()) shape.push_back(d);
         for (int64_t d = axis + 1; d < x.dim(); ++d) shape.push_back(x.size(d));
         s.out(g.reshape(shape));
       }},
      // OneHot: I0 indices, I1 depth, I2 dtype; F0 on, F1 off.
      {"OneHot", [](State& s) {
         const at::Tensor& idx = s.in(0);
         const int64_t depth = s.i(1);
         // tfjs: indices outside [0, depth) give an all-off row.
         at::Tensor valid = (idx >= 0) & (idx < depth);
         at::Tensor hot = at::one_hot(at::where(valid, idx, at::zeros_like(idx)).to(at::kLong), depth);
         hot = hot & valid.unsqueeze(-1);
         s.outAs(at::where(hot.to(at::kBool), at::scalar_tensor(s.f(0), s.opts(at::kFloat)),
                           at::scalar_tensor(s.f(1), s.opts(at::kFloat))), s.i(2));
       }},
      // AddN: I0 n, I1.. ids.
      {"AddN", [](State& s) {
         const int n = s.i(0);
         if (n == 1) { s.out(s.in(1)); return; }
         at::Tensor acc = at::add(s.in(1), s.in(2));
         for (int j = 2; j < n; ++j) acc.add_(s.in(1 + j));
         s.out(acc);
       }},

      // ---- linear algebra
      // BatchMatMul: I0 a, I1 b, I2 transposeA, I3 transposeB.
      {"BatchMatMul", [](State& s) {
         at::Tensor a = s.in(0), b = s.in(1);
         if (s.i(2)) a = a.transpose(-2, -1);
         if (s.i(3)) b = b.transpose(-2, -1);
         s.out(at::matmul(a, b));
       }},
      // _FusedMatMul: I0 a, I1 b, I2 bias id or -1, I3 transA, I4 transB, I5 activation,
      // I6 prelu weights id or -1; F0 leaky alpha.
      {"_FusedMatMul", [](State& s) {
         at::Tensor a = s.in(0), b = s.in(1);
         if (s.i(3)) a = a.transpose(-2, -1);
         if (s.i(4)) b = b.transpose(-2, -1);
         at::Tensor y = at::matmul(a, b);
         if (s.i(2) >= 0) y.add_(s.in(2));
         s.out(activate(y, s.i(5), s, 6, s.f(0)));
       }},
      // GroupNormAct: I0 x NHWC, I1 shift [N,C], I2 gamma [C], I3 beta [C], I4 groups, I5 swish,
      // I6 force the ATen path; F0 eps.
      {"GroupNormAct", [](State& s) {
         const GroupNormArgs g = groupNormArgs(s.in(0), s.i(4), s.f(0), s.i(5) != 0);
         if (!fastPath(s.in(0), s.i(6) != 0)) {
           s.out(groupNormAten(s.in(0), s.in(1), s.in(2), s.in(3), g, nullptr)[0]);
           return;
         }
         const at::Tensor x = s.in(0).contiguous(), shift = s.in(1).contiguous();
         const at::Tensor gamma = s.in(2).contiguous(), beta = s.in(3).contiguous();
         at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
         const float *px = x.data_ptr<float>(), *psh = shift.data_ptr<float>();
         const float *pg = gamma.data_ptr<float>(), *pb = beta.data_ptr<float>();
         float* py = y.data_ptr<float>();
         at::parallel_for(0, g.n, 1, [&](int64_t b, int64_t e) {
           for (int64_t i = b; i < e; ++i) {
             sf::groupNormForward(px + i * g.hw * g.c, psh + i * g.c, pg, pb, g.hw, g.c, g.groups,
                                  static_cast<float>(g.eps), g.swish, py + i * g.hw * g.c);
           }
         });
         s.out(y);
       }},
      // GroupNormActGrad: I0 dy, I1 x, I2 shift, I3 gamma, I4 beta, I5 groups, I6 swish, I7 force ATen;
      // F0 eps. Outputs dx, dshift [N,C], dgamma [C], dbeta [C].
      {"GroupNormActGrad", [](State& s) {
         const GroupNormArgs g = groupNormArgs(s.in(1), s.i(5), s.f(0), s.i(6) != 0);
         if (!fastPath(s.in(1), s.i(7) != 0)) {
           const at::Tensor dy = s.in(0);
           for (auto& t : groupNormAten(s.in(1), s.in(2), s.in(3), s.in(4), g, &dy)) s.out(t);
           return;
         }
         const at::Tensor dy = s.in(0).contiguous(), x = s.in(1).contiguous(), shift = s.in(2).contiguous();
         const at::Tensor gamma = s.in(3).contiguous(), beta = s.in(4).contiguous();
         at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
         at::Tensor dshift = at::empty({g.n, g.c}, x.options());
         at::Tensor dgamma = at::empty({g.n, g.c}, x.options()), dbeta = at::empty({g.n, g.c}, x.options());
         const float *pdy = dy.data_ptr<float>(), *px = x.data_ptr<float>(), *psh = shift.data_ptr<float>();
         const float *pg = gamma.data_ptr<float>(), *pb = beta.data_ptr<float>();
         float *pdx = dx.data_ptr<float>(), *pds = dshift.data_ptr<float>();
         float *pdg = dgamma.data_ptr<float>(), *pdb = dbeta.data_ptr<float>();
         at::parallel_for(0, g.n, 1, [&](int64_t b, int64_t e) {
           for (int64_t i = b; i < e; ++i) {
             const int64_t o = i * g.hw * g.c;
             sf::groupNormBackward(pdy + o, px + o, psh + i * g.c, pg, pb, g.hw, g.c, g.groups,
                                   static_cast<float>(g.eps), g.swish, pdx + o, pds + i * g.c, pdg + i * g.c,
                                   pdb + i * g.c);
           }
         });
         s.out(dx);
         s.out(dshift);
         s.out(dgamma.sum(0));
         s.out(dbeta.sum(0));
       }},
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
  return table;
}

// ---------------------------------------------------------------- exported functions

// init(buffer: ArrayBuffer, device: string): binds the argument buffer and the device.
napi_value Init(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  State* s = stateOf(env, info, &argc, argv);
  return guarded(env, "init", [&]() -> napi_value {
    if (argc < 2) throw JsError("init(buffer, device) needs two arguments");
    void* data = nullptr;
    size_t len = 0;
    NAPI_OK(napi_get_arraybuffer_info(env, argv[0], &data, &len));
    if (len < kBufBytes) throw JsError("argument buffer too small");
    char dev[64];
    size_t dlen = 0;
    NAPI_OK(napi_get_value_string_utf8(env, argv[1], dev, sizeof dev, &dlen));
    c10::Device device(std::string(dev, dlen));  // throws on a malformed name
    if (device.is_cuda()) {
      if (!at::hasCUDA()) throw JsError("device '" + std::string(dev, dlen) + "' asked for, but this libtorch has no CUDA (or no GPU is visible)");
      const int64_t n = static_cast<int64_t>(at::getNumGPUs());
      const int64_t idx = device.has_index() ? device.index() : 0;
      if (idx >= n) throw JsError("device '" + std::string(dev, dlen) + "' asked for, but only " + std::to_string(n) + " CUDA device(s) are visible");
      device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(idx));
    } else if (!device.is_cpu()) {
      throw JsError("device '" + std::string(dev, dlen) + "' is not supported: use cpu or cuda:N");
    }
    if (s->bufRef) napi_delete_reference(env, s->bufRef);
    NAPI_OK(napi_create_reference(env, argv[0], 1, &s->bufRef));
    s->I = static_cast<int32_t*>(data);
    s->F = reinterpret_cast<double*>(static_cast<char*>(data) + kInts * 4);
    s->device = device;
    return num(env, kBufBytes);
  });
}

// ops(): names of the ops, in the order run() numbers them.
napi_value Ops(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  stateOf(env, info, &argc, nullptr);
  return guarded(env, "ops", [&]() -> napi_value {
    const auto& t = opTable();
    napi_value arr;
    NAPI_OK(napi_create_array_with_length(env, t.size(), &arr));
    for (size_t k = 0; k < t.size(); ++k) {
      napi_value name;
      NAPI_OK(napi_create_string_utf8(env, t[k].first, NAPI_AUTO_LENGTH, &name));
      NAPI_OK(napi_set_element(env, arr, static_cast<uint32_t>(k), name));
    }
    return arr;
  });
}

// run(op): runs op with the arguments in the buffer; returns how many outputs it wrote at kOut.
napi_value Run(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  State* s = stateOf(env, info, &argc, argv);
  const auto& t = opTable();
  int32_t op = -1;
  napi_get_value_int32(env, argv[0], &op);
  const char* name = (op >= 0 && op < static_cast<int32_t>(t.size())) ? t[op].first : "run";
  return guarded(env, name, [&]() -> napi_value {
    if (s->I == nullptr) throw JsError("init() was not called");
    if (op < 0 || op >= static_cast<int32_t>(t.size())) throw JsError("unknown op " + std::to_string(op));
    s->outPos = kOut + 1;
    s->outCount = 0;
    t[op].second(*s);
    s->I[kOut] = s->outCount;
    return num(env, s->outCount);
  });
}

// create(values: TypedArray): a tensor from JS values; I0 dtype, I1 ndim, I2.. shape. Returns its id.
napi_value Create(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  State* s = stateOf(env, info, &argc, argv);
  return guarded(env, "write", [&]() -> napi_value {
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    NAPI_OK(napi_get_typedarray_info(env, argv[0], &type, &length, &data, nullptr, nullptr));
    const at::ScalarType st = scalarOf(s->I[0]);
    std::vector<int64_t> shape = s->ints(2, s->I[1]);
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(st));
    const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
    size_t given = length;
    switch (type) {
      case napi_float32_array: case napi_int32_array: case napi_uint32_array: given *= 4; break;
      case napi_float64_array: given *= 8; break;
      case napi_int16_array: case napi_uint16_array: given *= 2; break;
      default: break;
    }
    if (given != bytes) {
      throw JsError("values have " + std::to_string(given) + " bytes, the shape needs " + std::to_string(bytes));
    }
    if (bytes > 0) std::memcpy(t.data_ptr(), data, bytes);
    if (!s->device.is_cpu()) t = t.to(s->device);
    return num(env, s->put(std::move(t)));
  });
}

// read(id, into: TypedArray): copies the tensor's values (row-major) into `into`.
napi_value Read(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  State* s = stateOf(env, info, &argc, argv);
  return guarded(env, "read", [&]() -> napi_value {
    at::Tensor t = s->get(argInt(env, argv[0]));
    if (!t.device().is_cpu()) t = t.to(at::kCPU);  // waits for the device
    t = t.contiguous();
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    NAPI_OK(napi_get_typedarray_info(env, argv[1], &type, &length, &data, nullptr, nullptr));
    const size_t elem = (type == napi_uint8_array || type == napi_int8_array) ? 1 : 4;
    const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
    if (length * elem != bytes) throw JsError("destination has the wrong size");
    if (bytes > 0) std::memcpy(data, t.data_ptr(), bytes);
    return nullptr;
  });
}

// free(id).
napi_value Free(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  State* s = stateOf(env, info, &argc, argv);
  int32_t id = -1;
  napi_get_value_int32(env, argv[0], &id);
  s->release(id);
  return nullptr;
}

// stats(): [live tensors, bytes held by them (views counted in full)].
napi_value Stats(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  State* s = stateOf(env, info, &argc, nullptr);
  return guarded(env, "stats", [&]() -> napi_value {
    double bytes = 0;
    for (const auto& t : s->slots) {
      if (t.defined()) bytes += static_cast<double>(t.numel()) * t.element_size();
    }
    napi_value arr;
    NAPI_OK(napi_create_array_with_length(env, 2, &arr));
    NAPI_OK(napi_set_element(env, arr, 0, num(env, static_cast<double>(s->live))));
    NAPI_OK(napi_set_element(env, arr, 1, num(env, bytes)));
    return arr;
  });
}

// setThreads(n): libtorch intra-op threads for the calling thread's pool; returns the count in use.
napi_value SetThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  stateOf(env, info, &argc, argv);
  return guarded(env, "setThreads", [&]() -> napi_value {
    const int32_t n = argc > 0 ? argInt(env, argv[0]) : 0;
    if (n > 0) at::set_num_threads(n);
    return num(env, at::get_num_threads());
  });
}

// adam(g, p, m, v, ema: Float32Array, scalars: Float64Array [scale, beta1, beta2, stepSize, sqrtBc2,
// eps, decay]): one Adam + EMA update in place (see adam.cc), over intra-op threads. Returns -1, or
// the index of the first non-finite gradient value, in which case nothing was written.
napi_value Adam(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  stateOf(env, info, &argc, argv);
  return guarded(env, "adam", [&]() -> napi_value {
    if (argc < 6) throw JsError("adam(g, p, m, v, ema, scalars) needs six arguments");
    float* vec[5];
    size_t n = 0;
    for (int k = 0; k < 5; ++k) {
      napi_typedarray_type type;
      size_t length = 0;
      void* data = nullptr;
      NAPI_OK(napi_get_typedarray_info(env, argv[k], &type, &length, &data, nullptr, nullptr));
      if (type != napi_float32_array) throw JsError("adam: vectors must be Float32Arrays");
      if (k == 0) n = length;
      if (length != n) throw JsError("adam: vectors differ in length");
      vec[k] = static_cast<float*>(data);
    }
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    NAPI_OK(napi_get_typedarray_info(env, argv[5], &type, &length, &data, nullptr, nullptr));
    if (type != napi_float64_array || length != 7) throw JsError("adam: scalars must be a Float64Array of 7");
    const double* sc = static_cast<const double*>(data);
    const sf::AdamScalars a{sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6]};
    const int64_t len = static_cast<int64_t>(n);
    const int64_t bad = sf::firstNonFinite(vec[0], 0, len);
    if (bad >= 0) return num(env, static_cast<double>(bad));
    at::parallel_for(0, len, 1 << 16, [&](int64_t b, int64_t e) { sf::adamRange(a, vec[0], vec[1], vec[2], vec[3], vec[4], b, e); });
    return num(env, -1);
  });
}

// info(): { cuda: boolean, gpus: number, threads: number, mkldnn: boolean }.
napi_value InfoFn(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  stateOf(env, info, &argc, nullptr);
  return guarded(env, "info", [&]() -> napi_value {
    napi_value o, v;
    NAPI_OK(napi_create_object(env, &o));
    const bool cuda = at::hasCUDA();
    NAPI_OK(napi_get_boolean(env, cuda, &v));
    NAPI_OK(napi_set_named_property(env, o, "cuda", v));
    NAPI_OK(napi_set_named_property(env, o, "gpus", num(env, cuda ? static_cast<double>(at::getNumGPUs()) : 0)));
    NAPI_OK(napi_set_named_property(env, o, "threads", num(env, at::get_num_threads())));
    NAPI_OK(napi_get_boolean(env, at::hasMKLDNN(), &v));
    NAPI_OK(napi_set_named_property(env, o, "mkldnn", v));
    return o;
  });
}

void Finalize(napi_env env, void* data, void*) {
  State* s = static_cast<State*>(data);
  if (s->bufRef) napi_delete_reference(env, s->bufRef);
  delete s;
}

}  // namespace

// One State per JS environment (main thread or worker), so worker threads never share a table.
NAPI_MODULE_INIT() {
  State* s = new State();
  napi_set_instance_data(env, s, Finalize, nullptr);
  const struct {
    const char* name;
    napi_callback cb;
  } fns[] = {{"init", Init}, {"ops", Ops}, {"run", Run}, {"create", Create}, {"read", Read},
             {"free", Free}, {"stats", Stats}, {"setThreads", SetThreads}, {"info", InfoFn}, {"adam", Adam}};
  for (const auto& f : fns) {
    napi_value fn;
    if (napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, s, &fn) != napi_ok) return nullptr;
    if (napi_set_named_property(env, exports, f.name, fn) != napi_ok) return nullptr;
  }
  napi_value v;
  napi_create_int32(env, kInts, &v);
  napi_set_named_property(env, exports, "kInts", v);
  napi_create_int32(env, kOut, &v);
  napi_set_named_property(env, exports, "kOut", v);
  napi_create_int32(env, kFloats, &v);
  napi_set_named_property(env, exports, "kFloats", v);
  if (sf::registerC10d(env, exports) != napi_ok) return nullptr;
  return exports;
}
