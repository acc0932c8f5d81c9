"""Pretext-task pretraining (rotation, jigsaw, SimCLR, ... one registered module each) on the engine's loop."""
from .registry import TASKS, PretextTask, task_options
from .train import SUMMARY, check_args, get_args_parser, main, run, run_identity

__all__ = ["SUMMARY", "TASKS", "PretextTask", "check_args", "get_args_parser", "main", "run", "run_identity",
           "task_options"]
