"""Command-line options every run shares, as parent parsers for the trainers' own parsers."""
from __future__ import annotations

import argparse
import math

import scans

from .errors import ConfigError


def runtime_parser(log_every: int = 10, ckpt_every: int = 0, workers: int = 0) -> argparse.ArgumentParser:
    """``--out``, ``--device``, ``--amp`` and the reporting options, all of which are in
    :data:`engine.NOT_IDENTITY` (they change no number) except ``--device`` and ``--amp``."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder (running the same command again resumes or skips it)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--amp", action="store_true", help="mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU)")
    g = p.add_argument_group("reporting (these options change no result and are not part of the run identity)")
    g.add_argument("--workers", type=int, default=workers,
                   help="DataLoader workers (-1: 0 on <= 2 cores, else up to 8)")
    g.add_argument("--log-every", type=int, default=log_every, help="log scalars every N steps")
    g.add_argument("--ckpt-every", type=int, default=ckpt_every, help="also checkpoint every N steps (0: never)")
    g.add_argument("--stop-at-step", type=int, default=0, help="stop after step N as if interrupted (resume later)")
    g.add_argument("--progress-every", type=float, default=30.0,
                   help="seconds between progress lines when not on a terminal")
    g.add_argument("--sleep-per-step", type=float, default=0.0, help="slow the run down (tests of interruption)")
    g.add_argument("--wait-at-step", type=int, default=0,
                   help="after step N, wait for a stop signal (tests of interruption: the signal lands at a known step)")
    return p


def check_runtime_args(args) -> None:
    """Raise ConfigError for a runtime or optimizer option out of range, or an ``--out`` inside a dataset
    folder (a run's files there could replace the dataset's), before anything is created."""
    root = scans.dataset_root(args.out)
    if root is not None:
        raise ConfigError(f"--out {args.out} lies in the dataset folder {root}; a run folder there could replace "
                          "its files: use a folder outside it")
    for name in ("log_every",):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("ckpt_every", "stop_at_step", "progress_every", "sleep_per_step", "wait_at_step"):
        value = getattr(args, name)
        if not value >= 0 or not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.workers < -1:
        raise ConfigError(f"--workers must be >= 0 (or -1: automatic), got {args.workers}")


def check_finite(flag: str, value: float, minimum: float, inclusive: bool = True) -> None:
    """ConfigError unless ``value`` is a finite number >= ``minimum`` (> with ``inclusive=False``); the
    message names ``flag``, the option as its trainer calls it."""
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        raise ConfigError(f"{flag} must be a finite number {'>=' if inclusive else '>'} {minimum:g}, got {value}")


def as_flags(options: dict) -> list[str]:
    """``{"batch_size": 8, "amp": True, "size": [48, 64]}`` -> ``--batch-size 8 --amp --size 48 64``
    (False and None are left out)."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out
