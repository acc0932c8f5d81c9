"""Run plumbing shared by pretraining and fine-tuning.

Seeding, git provenance, atomic checkpoints with automatic resume, a JSON-lines log, the
learning-rate schedule, a resumable sharded sampler, graceful SIGTERM/SIGUSR1 handling and
``torch.distributed`` set-up (torchrun or submitit tasks; one process on CPU works too).
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = "checkpoint.pt"


# ------------------------------------------------------------------ provenance

def git_info() -> dict:
    """Commit hash and whether the tree has uncommitted changes (``None`` outside git)."""
    def run(*cmd):
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = run("rev-parse", "HEAD") or None
        dirty = bool(run("status", "--porcelain", "--untracked-files=no")) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


# Packages whose versions change the numbers of a run (kernels, augmentations, model code).
NUMERIC_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "opencv-python-headless", "albumentations",
                    "albucore", "timm", "lightly")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict:
    versions = {}
    for name in NUMERIC_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict:
    """Where a run ran: host, CPU model and count, Python, the numeric packages' versions, GPU."""
    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "packages": package_versions()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_header(name: str, args: dict) -> dict:
    """Print the git commit, dirty flag and every argument sorted; return the provenance dict."""
    g = git_info()
    print(f"{name}: commit {g['commit']} {'(dirty tree)' if g['dirty'] else ''}".rstrip(), flush=True)
    for k in sorted(args):
        print(f"  {k}: {args[k]}")
    return {**g, "machine": machine_info(), "argv": sys.argv}


# ------------------------------------------------------------------ determinism

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init(worker_id: int) -> None:
    """DataLoader worker seeding: numpy/random follow torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "reseed"):
        transform.reseed(s % 2**31)


class ResumableSampler(torch.utils.data.Sampler):
    """Epoch-seeded shuffle, sharded across processes, that can start mid-epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees exactly the
    batches the interrupted run would have seen. Each rank takes every ``world``-th index.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        self.epoch, self.start_batch = 0, 0
        self.per_rank = n // world
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{n} samples over {world} process(es) give no full batch of {batch_size}; lower --batch-size")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        mine = order[self.rank : self.per_rank * self.world : self.world]
        used = self.batches_per_epoch * self.batch_size
        return iter(mine[self.start_batch * self.batch_size : used])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def lr_at(step: int, total: int, base_lr: float, warmup: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio * base_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ------------------------------------------------------------------ devices and processes

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when launched with several processes; return (rank, world, device).

    Reads the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), which
    submitit's ``TorchDistributedEnvironment().export()`` also sets on SLURM.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class StopSignal:
    """Turns SIGTERM / SIGUSR1 (SLURM pre-emption, Ctrl-C) into a flag the loop checks between steps."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.previous = {}
        for sig in self.SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. submitit debug executor)
                pass

    def _handle(self, signum, frame):
        self.received = signum

    def close(self) -> None:
        """Give the signals back to whoever handled them before."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def __bool__(self) -> bool:
        return self.received is not None


# ------------------------------------------------------------------ files

def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Save through a temporary file and ``os.replace``: a kill never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | os.PathLike) -> dict | None:
    p = Path(run_dir) / CHECKPOINT
    if not p.is_file():
        return None
    return torch.load(p, map_location="cpu", weights_only=False)


def capture_rng() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class JsonlLog:
    """Append-only JSON-lines log (one object per line); rows past ``step`` are dropped on resume."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled and resume_step is not None and self.path.exists():
            keep = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l).get("step", 0) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in keep))

    def write(self, **row) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")
