"""Bits/dim by the probability flow ODE (Song et al. 2021, sec. 4.3 and app. D.2).

With the ODE dx/dt = f(x, t) = -1/2 g(t)^2 s(x, t), the instantaneous change of variables gives

  log p_0(x(0)) = log p_1(x(1)) + int_0^1 div f(x(t), t) dt,   div f = -1/2 g(t)^2 div_x s(x, t),

integrated from eps to 1 jointly with x(t). The divergence is Hutchinson's unbiased estimate
eps^T (ds/dx) eps with one Gaussian probe eps per image (a vector-Jacobian product). The prior is
N(0, std(1)^2 I). For data dequantised to [0, 1] with 256 levels per pixel, over N pixels,

  bits/dim = -log p_0(x) / (N ln 2) + 8      (log2 256 = 8: the density in the [0, 256) scale).
"""
import math

import numpy as np
import torch
from scipy import integrate

EPS = 1e-3


def prior_logp(z, sigma):
    """log N(z; 0, sigma^2 I) per image."""
    n = int(np.prod(z.shape[1:]))
    return -n / 2.0 * math.log(2 * math.pi * sigma ** 2) - torch.sum(z ** 2, dim=(1, 2, 3)) / (2 * sigma ** 2)


def ode_bpd(model, x, rtol=1e-5, atol=1e-5, eps=EPS, generator=None):
    """(bits/dim per image [B], number of function evaluations) of x in [0, 1], already dequantised."""
    shape = x.shape
    b = shape[0]
    probe = torch.randn(shape, generator=generator)

    def rhs(s, y):
        xs = torch.tensor(y[:-b], dtype=torch.float32).reshape(shape).requires_grad_(True)
        g2 = float(model.sde.diffusion_sq(s))
        with torch.enable_grad():
            score = model(xs, torch.full((b,), float(s)))
            vjp = torch.autograd.grad(torch.sum(score * probe), xs)[0]
        div = torch.sum(vjp * probe, dim=(1, 2, 3))
        return np.concatenate([(-0.5 * g2 * score.detach()).numpy().reshape(-1),
                               (-0.5 * g2 * div).numpy()]).astype(np.float64)

    init = np.concatenate([x.numpy().reshape(-1), np.zeros(b)]).astype(np.float64)
    res = integrate.solve_ivp(rhs, (eps, 1.0), init, rtol=rtol, atol=atol, method="RK45")
    end = res.y[:, -1]
    z = torch.tensor(end[:-b], dtype=torch.float32).reshape(shape)
    delta = torch.tensor(end[-b:], dtype=torch.float32)  # int_eps^1 div f dt
    n = int(np.prod(shape[1:]))
    logp = prior_logp(z, model.sde.prior_std()) + delta
    return -logp / math.log(2) / n + 8.0, res.nfev
