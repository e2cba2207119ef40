"""The ScoreNet of the score-SDE MNIST tutorial: a time-conditioned U-Net whose output,
divided by the perturbation kernel's std, estimates the score grad_x log p_t(x).

Its parameters are named and laid out as PyTorch's state_dict has them, which is the checkpoint
interchange format of the project (src/core/model/params.ts maps them to our layouts):
  conv weight [out, in, kh, kw], conv-transpose weight [in, out, kh, kw], linear weight [out, in],
  GroupNorm weight/bias [C], embed.W [embed_dim / 2] (fixed, not trained).
38 tensors for the default channels (32, 64, 128, 256) and embed_dim 256.

The modules are created in a fixed order, so torch.manual_seed(s); ScoreNet() gives the same
initial weights on every run (make_fixture.py relies on it).
"""
import math

import torch
import torch.nn as nn

from sde import VESDE

CHANNELS = (32, 64, 128, 256)
EMBED_DIM = 256
FOURIER_SCALE = 8.0


class GaussianFourierProjection(nn.Module):
    """Time embedding [sin(2 pi W t), cos(2 pi W t)] with fixed random frequencies W ~ N(0, scale^2)."""

    def __init__(self, embed_dim, scale=FOURIER_SCALE):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embed_dim // 2) * scale, requires_grad=False)

    def forward(self, t):
        proj = t[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class Dense(nn.Module):
    """A linear map of the embedding, shaped [B, C, 1, 1] to add to a feature map."""

    def __init__(self, input_dim, output_dim):
        super().__init__()
        self.dense = nn.Linear(input_dim, output_dim)

    def forward(self, x):
        return self.dense(x)[..., None, None]


def swish(x):
    return x * torch.sigmoid(x)


class ScoreNet(nn.Module):
    """s_theta(x, t) for 1-channel images whose sides pass three stride-2 3x3 convolutions (28x28)."""

    def __init__(self, channels=CHANNELS, embed_dim=EMBED_DIM, fourier_scale=FOURIER_SCALE, sde=None):
        super().__init__()
        c = tuple(channels)
        if len(c) != 4:
            raise ValueError(f"ScoreNet needs 4 channel counts, got {c}")
        self.sde = sde or VESDE()
        self.embed = GaussianFourierProjection(embed_dim, fourier_scale)
        # encoder: 28 -> 26 -> 12 -> 5 -> 2 (valid convolutions); GroupNorm(4) first, then 32 groups
        self.conv1 = nn.Conv2d(1, c[0], 3, stride=1, bias=False)
        self.dense1 = Dense(embed_dim, c[0])
        self.gnorm1 = nn.GroupNorm(4, num_channels=c[0])
        self.conv2 = nn.Conv2d(c[0], c[1], 3, stride=2, bias=False)
        self.dense2 = Dense(embed_dim, c[1])
        self.gnorm2 = nn.GroupNorm(32, num_channels=c[1])
        self.conv3 = nn.Conv2d(c[1], c[2], 3, stride=2, bias=False)
        self.dense3 = Dense(embed_dim, c[2])
        self.gnorm3 = nn.GroupNorm(32, num_channels=c[2])
        self.conv4 = nn.Conv2d(c[2], c[3], 3, stride=2, bias=False)
        self.dense4 = Dense(embed_dim, c[3])
        self.gnorm4 = nn.GroupNorm(32, num_channels=c[3])
        # decoder: 2 -> 5 -> 12 -> 26 -> 28, each level concatenated with the encoder's (skip)
        self.tconv4 = nn.ConvTranspose2d(c[3], c[2], 3, stride=2, bias=False)
        self.dense5 = Dense(embed_dim, c[2])
        self.tgnorm4 = nn.GroupNorm(32, num_channels=c[2])
        self.tconv3 = nn.ConvTranspose2d(c[2] + c[2], c[1], 3, stride=2, bias=False, output_padding=1)
        self.dense6 = Dense(embed_dim, c[1])
        self.tgnorm3 = nn.GroupNorm(32, num_channels=c[1])
        self.tconv2 = nn.ConvTranspose2d(c[1] + c[1], c[0], 3, stride=2, bias=False, output_padding=1)
        self.dense7 = Dense(embed_dim, c[0])
        self.tgnorm2 = nn.GroupNorm(32, num_channels=c[0])
        self.tconv1 = nn.ConvTranspose2d(c[0] + c[0], 1, 3, stride=1)

    def forward(self, x, t):
        e = swish(self.embed(t))
        h1 = swish(self.gnorm1(self.conv1(x) + self.dense1(e)))
        h2 = swish(self.gnorm2(self.conv2(h1) + self.dense2(e)))
        h3 = swish(self.gnorm3(self.conv3(h2) + self.dense3(e)))
        h4 = swish(self.gnorm4(self.conv4(h3) + self.dense4(e)))
        h = swish(self.tgnorm4(self.tconv4(h4) + self.dense5(e)))
        h = swish(self.tgnorm3(self.tconv3(torch.cat([h, h3], dim=1)) + self.dense6(e)))
        h = swish(self.tgnorm2(self.tconv2(torch.cat([h, h2], dim=1)) + self.dense7(e)))
        h = self.tconv1(torch.cat([h, h1], dim=1))
        # the network predicts -z, the noise in units of the kernel's std: score = that / std
        return h / self.sde.marginal_std(t)[:, None, None, None]


def num_trainable(model):
    """Number of trained scalars (the size of one gradient all-reduce): all but embed.W."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
