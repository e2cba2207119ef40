"""The PyTorch side of `npm run bench` on any torch device (a CUDA GPU above all).

usage: python3 reference/torch_baseline_device.py [--device cuda:0] [--batch 32] [--threads N]
           [--quick] [--channels-last] [--no-tf32]

The same three figures, under the same JSON keys, as torch_baseline.py (the CPU baseline beside
it), from the same workloads (workloads.py), so bench/run.ts can set our figures beside them:
training images/s (DSM loss, backward, Adam) at --batch, forward images/s at batch 64, and
forward + input-gradient images/s at batch 64.

What differs from the CPU script, for a device whose kernels run asynchronously:
  - every timing brackets its calls with torch.cuda.synchronize(), so the kernels are counted;
  - on a GPU the number of calls is fitted to the device (at least 0.5 s of calls, 1 s without
    --quick, and at least 20 / 50), after 5 warm-up calls (on a CPU: 2, then 3 / 10 calls);
  - the figures are throughput over back-to-back calls (what PyTorch does in a training loop);
    *_synced_median keys add the median of single calls each waited for, which is what our
    figures are (a step of ours reads its gradients back to the host).
Plain float32, no autocast: what the torch backend computes. cuDNN's defaults are kept
(TF32 convolutions allowed, benchmark mode off), the same defaults libtorch gives the addon;
--no-tf32 turns TF32 off, --channels-last converts the model and inputs to channels-last.
"""
import os

# Debian's OpenBLAS starts a thread that spins in sched_yield and burns a core; our addon sets the
# same, so the comparison stays fair. It must be set before torch (and its OpenBLAS) is loaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from workloads import make_workloads  # noqa: E402

ap = argparse.ArgumentParser(description="throughput of the reference ScoreNet on a torch device")
ap.add_argument("--device", default="cpu")
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--quick", action="store_true")
ap.add_argument("--channels-last", action="store_true")
ap.add_argument("--no-tf32", action="store_true")
a = ap.parse_args()
if a.threads < 0 or a.batch < 1:
    ap.error("--threads must be >= 0 and --batch >= 1")

if a.threads:
    torch.set_num_threads(a.threads)
try:
    dev = torch.device(a.device)
except RuntimeError as e:
    sys.exit(f"torch_baseline_device.py: bad --device {a.device!r}: {str(e).splitlines()[0]}")
cuda = dev.type == "cuda"
if cuda:
    if not torch.cuda.is_available():
        sys.exit(f"torch_baseline_device.py: {a.device} asked for, but torch {torch.__version__} sees no CUDA device")
    torch.cuda.set_device(dev)
    if a.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
fmt = torch.channels_last if a.channels_last else torch.contiguous_format


def sync():
    if cuda:
        torch.cuda.synchronize(dev)


# On a CPU device, the CPU script's counts (2 warm-up calls, then 3 or 10), so it stays as quick.
WARMUP = 5 if cuda else 2
MIN_SECONDS = (0.5 if a.quick else 1.0) if cuda else 0.0
MIN_REPS = (20 if a.quick else 50) if cuda else (3 if a.quick else 10)
SINGLES = 50 if cuda else 3


def timed(fn):
    """(seconds per call over back-to-back calls, median seconds of single synchronised calls, calls)."""
    for _ in range(WARMUP):
        fn()
    sync()
    reps = MIN_REPS
    if MIN_SECONDS > 0:
        # a first estimate, to size the measured run
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        sync()
        est = (time.perf_counter() - t0) / 5
        reps = max(MIN_REPS, math.ceil(MIN_SECONDS / max(est, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    mean = (time.perf_counter() - t0) / reps
    single = []
    for _ in range(min(reps, SINGLES)):
        sync()
        t1 = time.perf_counter()
        fn()
        sync()
        single.append(time.perf_counter() - t1)
    return mean, statistics.median(single), reps


fns, images = make_workloads(a.batch, dev, fmt)
res = {k: timed(fn) for k, fn in fns.items()}
out = {
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "batch": a.batch,
    "train_images_per_s": images["train"] / res["train"][0],
    "sample_forward_images_per_s": images["forward"] / res["forward"][0],
    "likelihood_fe_images_per_s": images["forward_input_grad"] / res["forward_input_grad"][0],
    "device": str(dev),
    "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
    "train_images_per_s_synced_median": images["train"] / res["train"][1],
    "sample_forward_images_per_s_synced_median": images["forward"] / res["forward"][1],
    "likelihood_fe_images_per_s_synced_median": images["forward_input_grad"] / res["forward_input_grad"][1],
    "reps": {k: r[2] for k, r in res.items()},
    "float32": {
        "channels_last": a.channels_last,
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
    },
}
print(json.dumps(out))
