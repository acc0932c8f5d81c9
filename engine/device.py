"""Devices, processes and randomness: CPU / CUDA choice, torch.distributed set-up, seeding, and
the random-number states a checkpoint holds.

Randomness belongs to the sample: every random draw of a view or an augmentation comes from
``scans.sample_rng(seed, epoch, sample index)`` (the key the sampler hands the dataset), never from a global stream inside a
DataLoader worker, so the number of workers changes nothing and a resume mid-epoch is exact. The
global streams (torch CPU and CUDA, numpy, random) still seed the weights and drive dropout;
a checkpoint holds each rank's states (:func:`capture_rng`), as plain tensors and values, so it
loads with ``weights_only=True``.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError

_CONTROL_GROUP = None  # a gloo group for small CPU messages (stop flags, RNG states) beside NCCL


def check_device_name(name: str) -> None:
    """ConfigError unless ``name`` is a device this project runs on (cpu, cuda, cuda:N, auto), whether or not this
    machine has it (a job submitted from here runs elsewhere)."""
    try:
        ok = name == "auto" or torch.device(name).type in ("cpu", "cuda")
    except RuntimeError:
        ok = False
    if not ok:
        raise ConfigError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto")


def device_type(name: str) -> str:
    """The device type a ``--device`` value resolves to on this machine: ``cpu`` or ``cuda`` (``auto``: cuda when
    available). Part of a run's identity: cuda:0 and cuda:1 give the same numbers, a CPU and a GPU do not."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name.split(":")[0]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. A device this machine lacks (no CUDA, or ``cuda:N`` with N
    out of range) is a ConfigError, so trainers refuse it before they create anything."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for, but this machine has no CUDA device (use --device cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name} asked for, but this machine has {count} CUDA device(s): "
                              f"cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto")
    return device


def world_size() -> int:
    """Processes of this run: the torchrun / SLURM ``WORLD_SIZE`` (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when launched with several processes; return (rank, world, device).

    Reads the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), which
    submitit's ``TorchDistributedEnvironment().export()`` also sets on SLURM. With NCCL a gloo
    group is made beside it for the small CPU messages of the loop (stop flags, RNG states).
    """
    global _CONTROL_GROUP
    world = world_size()
    if world <= 1:
        return 0, 1, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    _CONTROL_GROUP = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return rank, world, device


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree(code: int) -> int:
    """The largest ``code`` over all processes (each passes its own; 0 means nothing to report)."""
    if not distributed():
        return code
    t = torch.tensor([code], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CONTROL_GROUP)
    return int(t.item())


def on_main(fn):
    """Run ``fn()`` on the main process (rank 0) and tell every process whether it failed: a collective, to be
    called on every process, so no process is left waiting for one that stopped. Rank 0 re-raises its own error;
    the others raise ConfigError saying that process 0 stopped. Returns ``fn()``'s result (None elsewhere)."""
    error, result = None, None
    if rank() == 0:
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised below, after the others know)
            error = e
    if agree(1 if error is not None else 0):
        if error is not None:
            raise error
        raise ConfigError("process 0 stopped (its error says why); this process stops with it")
    return result


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    if not distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_CONTROL_GROUP)
    return out


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def cleanup_distributed() -> None:
    global _CONTROL_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL_GROUP = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """This process's global random states as tensors and plain values (a ``weights_only`` checkpoint)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])},
             "python": {"version": version, "internal": list(internal), "gauss": gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "state": {"key": n["key"].numpy().astype(np.uint32),
                                                                         "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
