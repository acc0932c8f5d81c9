"""The run folder: one writer at a time, the run's identity, its config, checkpoint, log and result.

    RUN_DIR/.lock            held (flock) by the process working on the run; holds its PID
    RUN_DIR/config.json      identity, every argument, provenance, and what the trainer adds
    RUN_DIR/checkpoint.pt    full training state (model, optimizer, scaler, step, RNG), atomic
    RUN_DIR/log.jsonl        one JSON object per logged step
    RUN_DIR/<result>         summary.json (pretraining) or metrics.json (fine-tuning) when done
    RUN_DIR/events.out.*     TensorBoard

The lock is an ``flock`` on ``.lock``: the operating system releases it when the process ends
in any way (``kill -9`` included), so there is never a stale lock to clean up.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import torch

from atomicio import atomic_path, write_json

from .errors import RunBusy, RunMismatch
from .identity import identity_diff

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
LOCK = ".lock"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def lock_holder(path: str | os.PathLike) -> int | None:
    """PID of the process holding the run folder's lock, or None when nobody holds it."""
    lock = Path(path) / LOCK
    if not lock.is_file():
        return None
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


class RunFolder:
    """A run folder for one run identity. ``result`` is the file that marks the run as finished.

    Use :meth:`claim` before writing anything; it takes the lock and checks the identity.
    """

    def __init__(self, path: str | os.PathLike, identity: dict, result: str):
        self.path, self.identity, self.result_name = Path(path), identity, result
        self._lock = None

    # ------------------------------------------------------------- identity and state
    def config(self) -> dict | None:
        return read_json(self.path / CONFIG)

    def check_identity(self) -> None:
        """Raise RunMismatch when the folder holds a run with another identity."""
        old = self.config()
        if old is None:
            return
        diff = identity_diff(old.get("identity", {}), self.identity)
        if diff:
            raise RunMismatch(f"{self.path} holds a run with other settings ({'; '.join(diff)}); "
                              "use another --out or remove the folder")

    def finished(self) -> dict | None:
        """The result of the finished run with this identity, else None (raises RunMismatch)."""
        self.check_identity()
        res = read_json(self.path / self.result_name)
        return res if res is not None and res.get("status") == "done" and self.config() is not None else None

    def state(self) -> str:
        """``done``, ``running`` (locked by another process), ``other`` (another identity),
        ``partial`` (started, not finished) or ``new``; read-only."""
        if lock_holder(self.path) is not None:
            return "running"
        try:
            if self.finished() is not None:
                return "done"
        except RunMismatch:
            return "other"
        return "partial" if self.config() is not None else "new"

    # ------------------------------------------------------------- one writer
    def claim(self) -> "RunFolder":
        """Take the folder's lock (RunBusy if held) and check the identity (RunMismatch).

        Creates the folder. The lock is released by :meth:`release` or when the process ends.
        """
        if self._lock is not None:
            return self
        self.check_identity()  # before creating anything
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise RunBusy(f"{self.path} is in use by process {pid} (it holds {self.path / LOCK}); "
                          "wait for it to end or use another --out") from None
        try:
            self.check_identity()  # the previous holder may have written config.json meanwhile
        except RunMismatch:
            f.close()
            raise
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    def __enter__(self):
        return self.claim()

    def __exit__(self, *exc):
        self.release()

    # ------------------------------------------------------------- files
    def write_config(self, **extra) -> None:
        write_json(self.path / CONFIG, {"identity": self.identity, **extra})

    def write_result(self, result: dict) -> None:
        write_json(self.path / self.result_name, result)

    def save_checkpoint(self, state: dict) -> None:
        with atomic_path(self.path / CHECKPOINT) as tmp:
            torch.save({**state, "identity": self.identity}, tmp)

    def load_checkpoint(self) -> dict | None:
        p = self.path / CHECKPOINT
        return torch.load(p, map_location="cpu", weights_only=False) if p.is_file() else None
