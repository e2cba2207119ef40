"""The three timed workloads of the throughput baselines, the same as bench/core.ts times ours:

  train                 one training step at `batch`: t ~ U(1e-3, 1), z ~ N(0, I), DSM loss,
                        backward, Adam (lr 1e-4), on a fixed batch of uniform [0, 1] images
  forward               the score at batch 64, no grad (a sampler's network evaluation)
  forward_input_grad    score and eps^T ds/dx at batch 64 (the likelihood's Hutchinson evaluation)

Each is a closure of no arguments; figures are images per second = images per call / seconds per call.
"""
import torch

from losses import dsm_loss, sample_t_z
from scorenet import ScoreNet

EVAL_BATCH = 64
LR = 1e-4


def make_workloads(batch, device="cpu", memory_format=torch.contiguous_format, seed=0):
    """({name: fn}, {name: images per call}) on a freshly seeded ScoreNet."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = ScoreNet().to(dev, memory_format=memory_format)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    x = torch.rand(batch, 1, 28, 28, device=dev).contiguous(memory_format=memory_format)

    def train():
        t, z = sample_t_z(x)
        opt.zero_grad()
        dsm_loss(model, x, t, z).backward()
        opt.step()

    xs = torch.randn(EVAL_BATCH, 1, 28, 28, device=dev).contiguous(memory_format=memory_format)
    ts = torch.full((EVAL_BATCH,), 0.5, device=dev)
    probe = torch.randn_like(xs)

    def forward():
        with torch.no_grad():
            model(xs, ts)

    def forward_input_grad():
        xg = xs.clone().requires_grad_(True)
        torch.autograd.grad(torch.sum(model(xg, ts) * probe), xg)

    fns = {"train": train, "forward": forward, "forward_input_grad": forward_input_grad}
    return fns, {"train": batch, "forward": EVAL_BATCH, "forward_input_grad": EVAL_BATCH}
