"""The PyTorch side of `npm run bench` on this machine's CPU: the reference ScoreNet's throughput.

usage: /usr/bin/python3 reference/torch_baseline.py [--threads N] [--batch 32] [--quick]

Prints one JSON object: training images/s at --batch (DSM loss, backward, Adam), forward
images/s at batch 64 and forward + input-gradient images/s at batch 64 (workloads.py), so
bench/run.ts can set our figures beside them as ratios. Each figure: 2 warm-up calls, then the
mean over 10 back-to-back calls (3 with --quick).
"""
import os

# Debian's OpenBLAS starts a thread that spins in sched_yield and burns a core; our addon sets the
# same, so the comparison stays fair. It must be set before torch (and its OpenBLAS) is loaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from workloads import make_workloads  # noqa: E402

ap = argparse.ArgumentParser(description="CPU throughput of the reference ScoreNet")
ap.add_argument("--threads", type=int, default=0, help="intra-op threads (default: torch's own choice)")
ap.add_argument("--batch", type=int, default=32, help="training batch")
ap.add_argument("--quick", action="store_true", help="3 timed calls instead of 10")
a = ap.parse_args()
if a.threads < 0 or a.batch < 1:
    ap.error("--threads must be >= 0 and --batch >= 1")
if a.threads:
    torch.set_num_threads(a.threads)
reps = 3 if a.quick else 10


def seconds_per_call(fn):
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


fns, images = make_workloads(a.batch)
rate = {k: images[k] / seconds_per_call(fn) for k, fn in fns.items()}
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": a.batch,
                  "train_images_per_s": rate["train"],
                  "sample_forward_images_per_s": rate["forward"],
                  "likelihood_fe_images_per_s": rate["forward_input_grad"]}))
