"""Run identity: what makes two runs the same run.

A run's identity is every argument that can change its result, plus the content (sha256) of the
input files it reads besides the data set (the split file, an encoder or weights file). Only
the arguments in :data:`NOT_IDENTITY` are left out; they change where and how a run reports,
never its numbers. Resuming a run, or skipping a finished one, requires the same identity;
anything else is refused (:class:`engine.RunMismatch`) and names each difference.

Not part of the identity: the code version (a run records its commit; it is not rerun when the
code changes) and the content of the data folder (named by its path).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .device import device_type

# The engine's own arguments that cannot change a run's numbers, and why. A trainer adds its own
# (``run_identity(..., not_identity=...)``).
NOT_IDENTITY = {
    "out": "the run folder itself",
    "workers": "DataLoader workers; every sample draws from its own generator, so batches are the same whatever their number",
    "log_every": "how often scalars are logged",
    "ckpt_every": "how often a checkpoint is written",
    "stop_at_step": "stop early as if interrupted; running again resumes to the same end",
    "progress_every": "how often a progress line is printed off a terminal",
    "sleep_per_step": "a slow-down for tests of interruption",
    "wait_at_step": "a pause until a stop signal, for tests of interruption; running again resumes to the same end",
}


def file_digest(path: str | os.PathLike | None) -> str | None:
    """sha256 of a file's bytes (``None`` when the file does not exist)."""
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_identity(args: dict, files: dict[str, str | None] = (), leave_out=(), not_identity=(),
                 world_size: int | None = None) -> dict:
    """The identity of a run with arguments ``args`` (a dict, e.g. ``vars(namespace)``).

    ``files`` maps an argument name to the file it points at; the identity gets
    ``<name>_sha256`` for each. ``leave_out`` names further arguments that do not apply to
    this run (a pretext task's options belong only to that task's runs); ``not_identity`` the
    trainer's own arguments that change no number. ``--device`` enters as the device type it
    resolves to (``auto`` on a GPU machine is ``cuda``); ``world_size``, when given, is the number
    of processes (it sets the global batch and the steps of an epoch).
    """
    ident = {k: v for k, v in args.items() if k not in NOT_IDENTITY and k not in leave_out and k not in not_identity}
    ident = {k: list(v) if isinstance(v, tuple) else v for k, v in ident.items()}
    if "device" in ident:
        ident["device"] = device_type(ident["device"])
    if world_size is not None:
        ident["world_size"] = int(world_size)
    for name, path in dict(files).items():
        ident[f"{name}_sha256"] = file_digest(path)
    return dict(sorted(ident.items()))


def identity_diff(old: dict, new: dict) -> list[str]:
    """``["--some-option 1 -> 2", "content of --some-file a1b2... -> c3d4...", ...]`` for every key whose
    value differs (a missing key reads as None)."""
    def name(k):  # "a_b" -> --a-b; "f_sha256" -> content of --f; "f__train_pool_sha256" -> train pool of --f
        if k == "world_size":
            return "world size (processes)"
        if k == "device":
            return "--device (type)"
        if not k.endswith("_sha256"):
            return "--" + k.replace("_", "-")
        arg, _, what = k.removesuffix("_sha256").partition("__")
        return f"{what.replace('_', ' ') or 'content'} of --{arg.replace('_', '-')}"

    def show(v):
        return f"{v[:12]}..." if isinstance(v, str) and len(v) == 64 else repr(v)
    return [f"{name(k)} {show(old.get(k))} -> {show(new.get(k))}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
