"""What a run tells: a JSON-lines log for machines, TensorBoard for people, progress for the console.

Progress is a tqdm bar on a terminal. Off a terminal (SLURM, nohup, a pipe) it is one line every
``every_s`` seconds with step, loss, rate and time left, so a log file shows that a run is alive
without a line per step.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from atomicio import write_text


class JsonlLog:
    """Append-only JSON-lines log (one object per line); rows past ``resume_step`` are dropped on resume."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled and resume_step is not None and self.path.exists():
            keep = [l for l in self.path.read_text().splitlines()
                    if l.strip() and json.loads(l).get("step", 0) <= resume_step]
            write_text(self.path, "".join(l + "\n" for l in keep))

    def write(self, **row) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]


def on_terminal() -> bool:
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Steps done out of ``total``: a tqdm bar on a terminal, else a line every ``every_s`` seconds."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", every_s: float = 30.0, enabled: bool = True):
        self.total, self.step, self.desc, self.every_s, self.enabled = total, initial, desc, every_s, enabled
        self.tty = on_terminal()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, mininterval=1,
                        disable=not (enabled and self.tty))
        self.t0, self.step0 = time.perf_counter(), initial
        self.t_line = self.t0
        self.fields: dict[str, str] = {}

    def update(self, step: int, **fields) -> None:
        self.bar.update(step - self.step)
        self.step = step
        if fields:
            self.fields = {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in fields.items()}
            self.bar.set_postfix(self.fields, refresh=False)
        now = time.perf_counter()
        if self.enabled and not self.tty and (now - self.t_line >= self.every_s or step == self.total):
            self.t_line = now
            rate = (step - self.step0) / max(1e-9, now - self.t0)
            eta = duration((self.total - step) / rate) if rate > 0 else "?"
            extra = "".join(f", {k} {v}" for k, v in self.fields.items())
            print(f"{self.desc}: step {step}/{self.total}{extra}, {rate:.2f} steps/s, {eta} left", flush=True)

    def write(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if self.enabled:
            (self.bar.write if self.tty else print)(text)
            sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()


def tensorboard_writer(path: str | os.PathLike, purge_step: int | None = None):
    """A TensorBoard SummaryWriter in ``path``; ``purge_step`` drops events past it (resume)."""
    from torch.utils.tensorboard import SummaryWriter  # imported on use: it loads tensorboard (~1 s)

    return SummaryWriter(str(path), purge_step=purge_step or None)


def print_header(name: str, folder, provenance: dict) -> None:
    """The run folder, commit and run identity (every result-affecting argument), in two lines."""
    dirty = " (dirty tree)" if provenance.get("dirty") else ""
    print(f"{name} -> {folder.path}: commit {provenance.get('commit')}{dirty}", flush=True)
    print("  " + " ".join(f"{k}={v}" for k, v in folder.identity.items() if not k.endswith("_sha256")), flush=True)
