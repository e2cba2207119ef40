// The ops that are one or a few ATen calls each: elementwise, reductions, shape and layout, linear
// algebra; and opTable(), every op in the order run() numbers them. The argument slots of each op
// are described beside it (see kernels.h).
#include "kernels.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sf {

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

namespace {

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

}  // namespace

OpTable kernelOps() {
  return {
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
  };
}

const OpTable& opTable() {
  static const OpTable table = [] {
    OpTable t = kernelOps();
    for (OpTable part : {groupNormOps(), convOps()}) t.insert(t.end(), part.begin(), part.end());
    return t;
  }();
  return table;
}

}  // namespace sf
