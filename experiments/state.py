"""Each run of a grid, by the trainers' own run identity: done, running elsewhere, other settings, ...

The rule is the one ``python -m pretrain`` / ``python -m finetune`` apply themselves
(``engine.RunFolder``): a run is done when its folder holds a finished run with the same
identity, running when another process holds the folder's lock.
"""
from __future__ import annotations

import time
from pathlib import Path

import engine
import finetune
import pretrain

from .grid import Run

TRAINERS = {"pretrain": pretrain, "finetune": finetune}
RESULT = {"pretrain": pretrain.SUMMARY, "finetune": finetune.METRICS}


def run_folder(run: Run) -> engine.RunFolder:
    """The run's folder with the identity its command line gives."""
    trainer = TRAINERS[run.kind]
    return engine.RunFolder(run.out, trainer.run_identity(trainer.get_args_parser().parse_args(list(run.argv))),
                            RESULT[run.kind])


def run_state(run: Run) -> str:
    """``done``, ``running`` (elsewhere), ``other`` (other settings), ``partial`` or ``new``."""
    return run_folder(run).state()


def move_aside(run: Run) -> Path:
    """Rename a run folder with other settings to ``<out>.stale-<time>`` so the run starts afresh."""
    out = Path(run.out)
    dest = out.with_name(f"{out.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    out.rename(dest)
    return dest
