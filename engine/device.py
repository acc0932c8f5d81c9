"""Devices, processes and randomness: CPU / CUDA choice, torch.distributed set-up, seeding."""
from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is a ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto") from None


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


def capture_rng() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def default_workers(requested: int) -> int:
    """DataLoader workers: ``requested`` when >= 0, else 0 on <= 2 cores and up to 8 above."""
    if requested >= 0:
        return requested
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores // 2)


def to_device(batch, device: torch.device, channels_last: bool = False):
    """Move a tensor or a (nested) tuple/list of tensors to ``device``; 4D tensors to channels_last if asked."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if channels_last and batch.ndim == 4 else batch
    return type(batch)(to_device(b, device, channels_last) for b in batch)


@contextmanager
def deterministic_on_cpu(device: torch.device):
    """Deterministic algorithms (warnings only) inside the block on the CPU, so a run and its
    predictions repeat bit for bit; on CUDA left as they are (cuDNN picks its fast kernels).
    The previous setting is restored on leaving."""
    before = torch.are_deterministic_algorithms_enabled()
    if torch.device(device).type != "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
