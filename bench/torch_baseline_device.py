"""The PyTorch side of `npm run bench` on any torch device (a CUDA GPU above all).

usage: python3 bench/torch_baseline_device.py [--device cuda:0] [--batch 32] [--threads N]
           [--ref-dir DIR] [--quick] [--channels-last] [--no-tf32]

The same three figures, under the same JSON keys, as the CPU reference torch_baseline.py (in
shared/reference/), so bench/run.ts can set our figures beside them: training images/s (DSM loss,
backward, Adam) at --batch, forward images/s at batch 64, and forward + input-gradient images/s at
batch 64. The model and the loss are imported from that folder's sbgm_ref.py (--ref-dir, else
$SCOREFLOW_REFERENCE_DIR, else ../../shared/reference beside this file), not copied here.

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
import argparse
import json
import math
import os
import statistics
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cpu")
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--ref-dir", default=os.environ.get("SCOREFLOW_REFERENCE_DIR"))
ap.add_argument("--quick", action="store_true")
ap.add_argument("--channels-last", action="store_true")
ap.add_argument("--no-tf32", action="store_true")
a = ap.parse_args()

ref_dir = a.ref_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "reference")
if not os.path.exists(os.path.join(ref_dir, "sbgm_ref.py")):
    sys.exit(f"torch_baseline_device.py: no sbgm_ref.py in {ref_dir} (pass --ref-dir or set SCOREFLOW_REFERENCE_DIR)")
sys.path.insert(0, os.path.abspath(ref_dir))

import torch  # noqa: E402
from sbgm_ref import ScoreNet, dsm_loss  # noqa: E402

if a.threads:
    torch.set_num_threads(a.threads)
dev = torch.device(a.device)
cuda = dev.type == "cuda"
if cuda:
    if not torch.cuda.is_available():
        sys.exit(f"torch_baseline_device.py: {a.device} asked for, but torch {torch.__version__} sees no CUDA device")
    torch.cuda.set_device(dev)
    if a.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
fmt = torch.channels_last if a.channels_last else torch.contiguous_format

torch.manual_seed(0)
m = ScoreNet().to(dev, memory_format=fmt)
opt = torch.optim.Adam(m.parameters(), lr=1e-4)


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


B = a.batch
x = torch.rand(B, 1, 28, 28, device=dev).contiguous(memory_format=fmt)


def train_step():
    t = torch.rand(B, device=dev) * (1 - 1e-3) + 1e-3
    z = torch.randn_like(x)
    opt.zero_grad()
    dsm_loss(m, x, t, z).backward()
    opt.step()


S = 64
xs = torch.randn(S, 1, 28, 28, device=dev).contiguous(memory_format=fmt)
ts = torch.full((S,), 0.5, device=dev)


def fwd():
    with torch.no_grad():
        m(xs, ts)


eps = torch.randn_like(xs)


def div_eval():
    xg = xs.clone().requires_grad_(True)
    sc = m(xg, ts)
    torch.autograd.grad(torch.sum(sc * eps), xg)


tr, tr1, tr_reps = timed(train_step)
fw, fw1, fw_reps = timed(fwd)
dv, dv1, dv_reps = timed(div_eval)
out = {
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "batch": B,
    "train_images_per_s": B / tr,
    "sample_forward_images_per_s": S / fw,
    "likelihood_fe_images_per_s": S / dv,
    "device": str(dev),
    "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
    "train_images_per_s_synced_median": B / tr1,
    "sample_forward_images_per_s_synced_median": S / fw1,
    "likelihood_fe_images_per_s_synced_median": S / dv1,
    "reps": {"train": tr_reps, "forward": fw_reps, "forward_input_grad": dv_reps},
    "float32": {
        "channels_last": a.channels_last,
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
    },
}
print(json.dumps(out))
