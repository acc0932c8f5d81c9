"""Atomic file writes: after a crash or a ``kill -9`` a file is either its old self or complete.

Every file the project writes (splits, configs, logs rewritten on resume, checkpoints, encoder
files, results, plots) goes through :func:`atomic_path`: the content is written to a temporary
file beside the target, which then replaces it with ``os.replace`` (atomic on POSIX file
systems). This package imports nothing of the project, so every other package may use it.

    with atomic_path("run/checkpoint.pt") as tmp:
        torch.save(state, tmp)
    write_json("run/summary.json", summary)
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_bytes", "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``.

    The parent folder is created if needed. On an error the temporary file is removed and
    ``path`` is left as it was. ``suffix`` ends the temporary name, for writers that choose the
    format by extension (``.nii.gz`` for nibabel).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    """JSON with sorted keys, one-space indent and a final newline (stable bytes for the same object)."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")
