// The fused GroupNorm ops (GroupNormAct, GroupNormActGrad):
//   y = act(GroupNorm(x + shift) * gamma + beta) over NHWC x, shift [N, C], gamma and beta [C].
// On CPU float32 the loops in fused.cc run one sample per task; elsewhere (CUDA), or when asked,
// the same maths in ATen ops. Both compute the statistics in two passes, about the mean.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "fused.h"
#include "kernels.h"

namespace sf {
namespace {

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

}  // namespace

OpTable groupNormOps() {
  return {
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
  };
}

}  // namespace sf
