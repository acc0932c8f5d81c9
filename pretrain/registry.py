"""The pretext-task registry: each task is one module in ``pretrain/tasks/`` with one registered class.

The protocol a task follows (see :class:`PretextTask`):

- class attributes ``name`` (the ``--task`` value), ``paper`` (citation) and ``summary`` (one
  line for ``--help`` and the README);
- ``add_args(group)`` adds the task's own command-line options (their names must not clash
  with another task's; they belong to this task's run identity only);
- ``__init__(args, encoder)`` builds, from the parsed arguments and a fresh encoder:
  ``self.views``: the dataset transform, ``(slice HxW float32 padded, content box
  (top, left, h, w), rng) -> sample``, collated by the DataLoader into a batch; ``rng`` is the
  sample's own ``numpy`` generator (``scans.sample_rng``), the only source of its random draws;
  ``self.model``: an ``nn.Module`` holding ``encoder`` as ``.encoder``, whose
  ``forward(batch)`` returns ``{"loss": scalar, "accuracy": scalar}`` (the pretext score; ``metric``
  says what it measures when it is not an accuracy);
  ``self.chance``: the accuracy of guessing;
- ``preview(batch)``: up to 18 images (N, 1, h, w) in [0, 1] of what the model sees, made from the
  batch alone (it draws no random number: the training's streams stay as they are);
- ``encoder_meta()``: what ``encoder.pt`` must carry beside the weights (e.g. the permutations);
- a task that trains a whole segmenter sets ``per_arch = True`` (one pretraining run per
  architecture: its network moves into that architecture only), may ask for encoder options
  (``encoder_kwargs(args)``, e.g. a stride-16 encoder for a TransUNet), and returns
  ``(segmenter, its constructor options)`` from ``network()``, which the trainer writes to
  ``network.pt`` (every weight but the output layer).

Adding a task: write ``pretrain/tasks/NAME.py`` with a ``@TASKS.register``-ed subclass (the registry
idiom of the encoders and architectures, ``models.Registry``), import it in ``pretrain/tasks/__init__.py``,
and write its test.
The CLI choices and options, the experiment config checks and the docs come from :data:`TASKS`.
"""
from __future__ import annotations

import argparse

from torch import nn

from models import Registry



class PretextTask:
    """Base class of a pretext task (see the module docstring for the protocol)."""

    name: str = ""
    paper: str = ""
    summary: str = ""
    per_arch: bool = False
    metric: str = "accuracy"  # what the logged "accuracy" (the pretext score) measures, in words
    views = None
    model: nn.Module
    chance: float

    @staticmethod
    def add_args(group) -> None:
        """Add the task's own options to an argparse group."""

    @staticmethod
    def encoder_kwargs(args) -> dict:
        """Options for ``models.create_encoder`` beyond the name (none by default)."""
        return {}

    def preview(self, batch):
        return self.model.preview(batch)

    def encoder_meta(self) -> dict:
        return {}

    def network(self):
        """``(segmenter, its constructor options)`` for ``network.pt``, or None (the encoder alone transfers)."""
        return None


def check_task(cls) -> None:
    """A registered task is a :class:`PretextTask` with a name and a summary."""
    if not (isinstance(cls, type) and issubclass(cls, PretextTask)) or not cls.name or not cls.summary:
        raise ValueError(f"pretext task {getattr(cls, '__name__', cls)} needs to be a PretextTask with a name and a summary")


TASKS = Registry("pretext task", check=check_task)


def task_options(name: str) -> list[str]:
    """Argument names (dests) of task ``name``'s own options."""
    p = argparse.ArgumentParser(add_help=False)
    TASKS[name].add_args(p)
    return [a.dest for a in p._actions]


def describe_tasks() -> str:
    """One line per registered task: name, summary, paper."""
    return "\n".join(f"  {n:<10} {c.summary} ({c.paper})" for n, c in sorted(TASKS.items()))
