"""Pretext-task pretraining: rotation, jigsaw and SimCLR over one shared training loop."""
from .train import TASKS, get_args_parser, run

__all__ = ["TASKS", "get_args_parser", "run"]
