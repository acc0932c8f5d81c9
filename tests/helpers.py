"""Shared test helpers: a changed value for every result-affecting argument, and a folder fingerprint."""
from __future__ import annotations

import hashlib
from pathlib import Path


def changed_value(action, other_file: Path) -> list[str]:
    """Command-line words that give ``action`` (an argparse action) a valid value other than its default."""
    flag = action.option_strings[0]
    if action.nargs == 0:  # store_true
        return [flag]
    if action.choices:
        return [flag, next(str(c) for c in action.choices if c != action.default)]
    default = action.default
    if action.nargs in (2, "+"):
        values = default or [1.0, 2.0, 3.0][: action.nargs if isinstance(action.nargs, int) else 3]
        return [flag, *(str(v + 16) if isinstance(v, int) else str(v * 2) for v in values)]
    if action.type is int:
        return [flag, str((default or 0) + 1)]
    if action.type is float:
        return [flag, str(round((default or 0.25) * 0.5, 6))]
    if action.dest in ("split", "imagenet_weights"):
        return [flag, str(other_file)]
    if action.dest == "init":
        return [flag, "imagenet"]
    if action.dest == "encoder":
        return [flag, "unet_small"]
    return [flag, f"{default}-other"]


def identity_actions(parser, identity: dict) -> list:
    """The parser's actions that are part of a run identity (one per identity argument)."""
    return [a for a in parser._actions if a.dest in identity and a.option_strings]


def fingerprint(folder: Path) -> dict:
    """name -> (sha256, mtime_ns) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def refused_names(err: str, action) -> bool:
    """The refusal's one line names the argument (as a flag or as ``content of`` the flag)."""
    return len(err.strip().splitlines()) == 1 and action.option_strings[0] in err

