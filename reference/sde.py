"""The variance-exploding (VE) SDE of Song et al. (2021): dx = g(t) dw for t in [0, 1].

The noise level grows geometrically, sigma(t) = sigma_min (sigma_max / sigma_min)^t, and

  perturbation kernel   p_0t(x(t) | x(0)) = N(x(0), (sigma(t)^2 - sigma_min^2) I)
  its std               marginal_std(t) = sqrt(sigma(t)^2 - sigma_min^2)   (0 at t = 0)
  diffusion             g(t)^2 = d sigma(t)^2 / dt = 2 sigma(t)^2 log(sigma_max / sigma_min)
  prior                 p_1 ~ N(0, marginal_std(1)^2 I)   (the mean x(0) is negligible beside sigma_max)

These are the conventions of src/core/sde.ts (sigma_min 0.01, sigma_max 22 by default). Everything
is float32, as the models are.
"""
import math

import torch

SIGMA_MIN = 0.01
SIGMA_MAX = 22.0


class VESDE:
    def __init__(self, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE SDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t):
        """The noise level sigma(t) (a tensor of t's shape)."""
        t = torch.as_tensor(t, dtype=torch.float32)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def marginal_std(self, t):
        """std of p_0t(x(t) | x(0)): sqrt(sigma(t)^2 - sigma_min^2)."""
        s = self.sigma(t)
        return torch.sqrt(s ** 2 - self.sigma_min ** 2)

    def diffusion_sq(self, t):
        """g(t)^2 = d sigma(t)^2 / dt = 2 sigma(t) * sigma(t) log(sigma_max / sigma_min)."""
        s = self.sigma(t)
        return 2 * s * (s * self.log_ratio)

    def prior_std(self):
        """std of the prior p_1, which samplers start from and the likelihood ends at."""
        return float(self.marginal_std(1.0))

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"
