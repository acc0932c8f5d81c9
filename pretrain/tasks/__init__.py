"""Pretext tasks, one module each; importing this package registers every task (``@TASKS.register``)."""
from . import jigsaw, restore, rotation, simclr  # noqa: F401

__all__ = ["jigsaw", "restore", "rotation", "simclr"]
