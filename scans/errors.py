"""The one error type for bad input: it names the file and the problem."""
from __future__ import annotations

import os


class ScanError(ValueError):
    """Bad input on disk. ``str(err)`` is one line: ``PATH: problem``."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
