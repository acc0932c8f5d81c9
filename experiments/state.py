"""Each run of a grid, by the trainers' own run identity: done, running elsewhere, other settings, ...

The rule is the one ``python -m pretrain`` / ``python -m finetune`` apply themselves
(``engine.RunFolder``): a run is done when its folder holds a finished run with the same
identity, running when another process holds the folder's lock.
"""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import engine
import finetune
import pretrain
from slurm import RESULT, TRAINERS, check_run_args

from .grid import Run


def parse(run: Run):
    """The run's arguments as its trainer parses them (ConfigError with argparse's message when it refuses them)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return TRAINERS[run.kind].get_args_parser().parse_args(list(run.argv))
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        raise engine.ConfigError(f"run {run.key}: {lines[-1] if lines else 'invalid arguments'}") from None


def check_runs(runs: list[Run]) -> None:
    """Every run's options as its trainer checks them (``check_args``), before anything starts: a config value
    that cannot run is refused in one line naming the run. The device is checked elsewhere (``--executor slurm``
    runs on other machines), and an encoder file a pretraining run of the grid will write need not exist yet."""
    for run in runs:
        try:
            check_run_args(run.kind, parse(run), pending_init=bool(run.needs))
        except (ValueError, OSError) as e:
            raise engine.ConfigError(f"run {run.key}: {e}") from None


def run_folder(run: Run, world_size: int | None = None) -> engine.RunFolder:
    """The run's folder with the identity its command line gives. ``world_size``: the processes a pretraining
    run has where it runs (1 on this machine, the profile's tasks on SLURM); None: the number its folder
    records (for ``status``, which does not know where the grid ran)."""
    args = parse(run)
    if run.kind == "finetune":
        return engine.RunFolder(run.out, finetune.run_identity(args), RESULT[run.kind])
    if world_size is None:
        world_size = ((engine.read_json(Path(run.out) / engine.CONFIG) or {}).get("identity") or {}).get("world_size", 1)
    return engine.RunFolder(run.out, pretrain.run_identity(args, world_size), RESULT[run.kind])


def run_state(run: Run, world_size: int | None = None) -> str:
    """``done``, ``running`` (elsewhere), ``other`` (other settings), ``partial`` or ``new``."""
    return run_folder(run, world_size).state()


def move_aside(run: Run) -> Path:
    """Rename a run folder with other settings to ``<out>.stale-<time>`` so the run starts afresh."""
    out = Path(run.out)
    dest = out.with_name(f"{out.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    out.rename(dest)
    return dest
