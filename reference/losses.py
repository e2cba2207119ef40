"""Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7) for the VE SDE.

With x(t) = x(0) + std(t) z, z ~ N(0, I), the score of the kernel is -z / std(t), so

  loss = E_t E_z || std(t) s_theta(x(0) + std(t) z, t) + z ||^2,   t ~ U(eps, 1)

(lambda(t) = std(t)^2 weighting). Per image: the sum over pixels; the loss: the mean over the
batch, as src/core/loss.ts computes it.
"""
import torch

EPS = 1e-3


def dsm_loss(model, x, t, z, sde=None):
    """The DSM loss with the times t [B] and noise z (x's shape) given; the SDE is the model's
    unless given (a DistributedDataParallel wrapper does not expose its module's attributes)."""
    std = (sde or model.sde).marginal_std(t)[:, None, None, None]
    score = model(x + z * std, t)
    return torch.sum((score * std + z).reshape(x.shape[0], -1) ** 2, dim=-1).mean()


def sample_t_z(x, eps=EPS, generator=None):
    """t ~ U(eps, 1) per image and z ~ N(0, I) of x's shape, on x's device."""
    t = torch.rand(x.shape[0], generator=generator, device=x.device) * (1 - eps) + eps
    z = torch.randn(x.shape, generator=generator, device=x.device)
    return t, z
