"""The run folder: one writer at a time, the run's identity, its config, checkpoint, log and result.

    RUN_DIR/.lock            held (flock) by the process working on the run; holds its PID
    RUN_DIR/config.json      identity, every argument, provenance, and what the trainer adds
    RUN_DIR/checkpoint.pt    full training state (model, optimizer, scaler, step, RNG), atomic
    RUN_DIR/log.jsonl        one JSON object per logged step
    RUN_DIR/<result>         summary.json (pretraining) or metrics.json (fine-tuning) when done
    RUN_DIR/events.out.*     TensorBoard

The lock is an ``flock`` on ``.lock``: the operating system releases it when the process ends
in any way (``kill -9`` included), so there is never a stale lock to clean up. A folder the
run created and left empty (the run was refused before it wrote anything) is removed again.

``checkpoint.pt`` is read with ``weights_only=True``: it holds tensors and plain values only, so
a file placed in a run folder cannot run code.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

import torch

from atomicio import atomic_path, write_json

from .errors import ConfigError, RunBusy, RunMismatch
from .device import device_type
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
    """PID of the process holding the folder's lock, or None when nobody holds it."""
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


class FolderLock:
    """One writer per output folder: an exclusive ``flock`` on ``FOLDER/.lock`` holding the writer's PID.

    ``acquire`` creates the folder (a path that is a file is a ConfigError) and raises RunBusy when
    another process holds the lock. ``release(failed=True)`` also removes the folder again when this
    process created it and nothing but the lock was written, so a refused command leaves nothing.
    """

    def __init__(self, path: str | os.PathLike, what: str = "--out"):
        self.path, self.what = Path(path), what
        self._file, self._created = None, False

    def acquire(self) -> "FolderLock":
        if self._file is not None:
            return self
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.what} {self.path} is a file, not a folder; use another {self.what}")
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise RunBusy(f"{self.path} is in use by process {pid} (it holds {self.path / LOCK}); "
                          f"wait for it to end or use another {self.what}") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self, failed: bool = False) -> None:
        if self._file is None:
            return
        if failed and self._created and {p.name for p in self.path.iterdir()} <= {LOCK}:
            (self.path / LOCK).unlink(missing_ok=True)  # still locked: nobody can take the folder meanwhile
            self.path.rmdir()
        self._file.close()  # closing the file drops the flock
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None


class RunFolder:
    """A run folder for one run identity. ``result`` is the file that marks the run as finished.

    Use :meth:`claim` before writing anything; it takes the lock and checks the identity.
    """

    def __init__(self, path: str | os.PathLike, identity: dict, result: str):
        self.path, self.identity, self.result_name = Path(path), identity, result
        self._lock = FolderLock(self.path)

    # ------------------------------------------------------------- identity and state
    def config(self) -> dict | None:
        return read_json(self.path / CONFIG)

    def check_identity(self) -> None:
        """Raise RunMismatch when the folder holds a run with another identity (ConfigError when --out is a file)."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} is a file, not a run folder; use another --out")
        old = self.config()
        if old is None:
            return
        old_identity = dict(old.get("identity", {}))
        if old_identity.get("device") == "auto":  # written before the device entered as its type
            old_identity["device"] = device_type("auto")
        diff = identity_diff(old_identity, self.identity)
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
        if self._lock.held:
            return self
        self.check_identity()  # before creating anything
        self._lock.acquire()
        try:
            self.check_identity()  # the previous holder may have written config.json meanwhile
        except RunMismatch:
            self._lock.release(failed=True)
            raise
        return self

    def release(self, failed: bool = False) -> None:
        """Drop the lock; with ``failed``, remove the folder if this process created it and wrote nothing in it."""
        self._lock.release(failed)

    def __enter__(self):
        return self.claim()

    def __exit__(self, exc_type, *exc):
        self.release(failed=exc_type is not None)

    # ------------------------------------------------------------- files
    def write_config(self, **extra) -> None:
        write_json(self.path / CONFIG, {"identity": self.identity, **extra})

    def write_result(self, result: dict) -> None:
        write_json(self.path / self.result_name, result)

    def save_checkpoint(self, state: dict) -> None:
        with atomic_path(self.path / CHECKPOINT) as tmp:
            torch.save({**state, "identity": self.identity}, tmp)

    def load_checkpoint(self) -> dict | None:
        """The folder's checkpoint (tensors and plain values only), or None; ConfigError naming the
        file when it cannot be read that way (damaged, or not written by this project's trainers)."""
        p = self.path / CHECKPOINT
        if not p.is_file():
            return None
        return load_weights(p, "checkpoint")


def load_weights(path: str | os.PathLike, what: str = "file"):
    """``torch.load(path, weights_only=True)`` on the CPU; a file that needs more than tensors and
    plain values (code) or is no torch file at all is a ConfigError naming it, in one line (never
    PyTorch's advice to load it with ``weights_only=False``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle and zip errors of every kind)
        text = str(e)
        code = re.search(r"GLOBAL ([\w.]+)", text)
        if code:
            detail = f"it would import {code.group(1)}: it holds more than tensors and plain values"
        elif "Weights only load failed" in text:
            lines = [l.strip() for l in text.split("WeightsUnpickler error:")[-1].splitlines() if l.strip()]
            detail = f"not a torch file of tensors and plain values ({lines[0] if lines else 'unpickling failed'})"
        else:
            detail = f"{type(e).__name__}: {text.strip().splitlines()[0]}" if text.strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot read this {what}: {detail}; it was not written by this project (or by "
                          "a version before checkpoints held tensors only, or is damaged): remove it or use another folder") from None
