"""Samplers for the reverse-time VE SDE (Song et al. 2021, sec. 4), on the CPU in float32.

Reverse SDE: dx = -g(t)^2 s(x, t) dt + g(t) dw_bar, from t = 1 (x ~ N(0, std(1)^2 I)) to t = eps.

- em_sampler: Euler-Maruyama on a uniform grid of num_steps times from 1 to eps,
      x <- x + g^2 s(x, t) dt + sqrt(g^2 dt) z;  the last step returns its mean (no noise).
- pc_sampler: each step one Langevin corrector step at signal-to-noise ratio snr,
      step = 2 (snr ||z|| / ||s||)^2,  x <- x + step s + sqrt(2 step) z  (norms averaged over the batch),
  then the Euler-Maruyama predictor.
- ode_sampler: the probability flow ODE dx/dt = -1/2 g(t)^2 s(x, t), integrated from 1 to eps by
  scipy's RK45 at rtol/atol (float64 state, float32 model).
Each takes a torch.Generator for reproducible noise and returns [n, 1, H, W] (the ODE: and its NFE).
"""
import numpy as np
import torch
from scipy import integrate

EPS = 1e-3
SHAPE = (1, 28, 28)


def prior_sample(model, n, shape=SHAPE, generator=None):
    """x(1) ~ N(0, std(1)^2 I)."""
    return torch.randn(n, *shape, generator=generator) * model.sde.prior_std()


def _grid(num_steps, eps):
    ts = np.linspace(1.0, eps, num_steps)
    return ts, ts[0] - ts[1]


def _em_step(model, x, t, dt, generator):
    """One Euler-Maruyama step of the reverse SDE: (next x, its mean)."""
    g2 = model.sde.diffusion_sq(t)[:, None, None, None]
    mean = x + g2 * model(x, t) * dt
    return mean + torch.sqrt(g2 * dt) * torch.randn(x.shape, generator=generator), mean


@torch.no_grad()
def em_sampler(model, n, num_steps=500, eps=EPS, shape=SHAPE, generator=None):
    x = prior_sample(model, n, shape, generator)
    ts, dt = _grid(num_steps, eps)
    mean = x
    for s in ts:
        x, mean = _em_step(model, x, torch.full((n,), float(s)), dt, generator)
    return mean


@torch.no_grad()
def pc_sampler(model, n, num_steps=500, snr=0.16, eps=EPS, shape=SHAPE, generator=None):
    x = prior_sample(model, n, shape, generator)
    ts, dt = _grid(num_steps, eps)
    noise_norm = float(np.sqrt(np.prod(shape)))  # E||z|| for z ~ N(0, I) in d dimensions, ~ sqrt(d)
    mean = x
    for s in ts:
        t = torch.full((n,), float(s))
        grad = model(x, t)
        grad_norm = torch.norm(grad.reshape(n, -1), dim=-1).mean()
        step = 2 * (snr * noise_norm / grad_norm) ** 2
        x = x + step * grad + torch.sqrt(2 * step) * torch.randn(x.shape, generator=generator)
        x, mean = _em_step(model, x, t, dt, generator)
    return mean


def ode_sampler(model, n, rtol=1e-5, atol=1e-5, eps=EPS, shape=SHAPE, generator=None):
    """(samples, number of model evaluations)."""
    x1 = prior_sample(model, n, shape, generator)
    full = x1.shape

    def drift(s, y):
        x = torch.tensor(y, dtype=torch.float32).reshape(full)
        with torch.no_grad():
            score = model(x, torch.full((n,), float(s)))
        return (-0.5 * float(model.sde.diffusion_sq(s)) * score).numpy().reshape(-1).astype(np.float64)

    res = integrate.solve_ivp(drift, (1.0, eps), x1.reshape(-1).numpy().astype(np.float64), rtol=rtol, atol=atol, method="RK45")
    return torch.tensor(res.y[:, -1], dtype=torch.float32).reshape(full), res.nfev
