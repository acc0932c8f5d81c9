"""Which runs of a grid are finished, and moving aside run folders made with other settings."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .grid import Run


def _parse(run: Run):
    if run.kind == "pretrain":
        from pretrain.train import get_args_parser
    else:
        from finetune.train import get_args_parser
    return get_args_parser().parse_args(list(run.argv))


def is_done(run: Run) -> bool:
    """Finished with the same settings: metrics.json (fine-tuning) or summary + encoder (pretraining)."""
    out = Path(run.out)
    if run.kind == "pretrain":
        from pretrain.train import finished
        return finished(out, _parse(run)) is not None
    from finetune.train import check_same_config
    metrics = out / "metrics.json"
    if not metrics.is_file():
        return False
    try:
        check_same_config(json.loads(metrics.read_text()).get("config", {}), _parse(run), metrics)
    except (ValueError, json.JSONDecodeError):
        return False
    return True


def has_other_settings(run: Run) -> bool:
    """The run folder holds a run (finished or not) whose settings differ from ``run``'s."""
    out = Path(run.out)
    args = _parse(run)
    if run.kind == "pretrain":
        from pretrain.train import RESUME_MUST_MATCH
        try:
            old = json.loads((out / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return any(old.get(k) != getattr(args, k) for k in RESUME_MUST_MATCH)
    from finetune.train import check_same_config
    for name in ("metrics.json", "config.json"):
        try:
            old = json.loads((out / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        try:
            check_same_config(old.get("config", old), args, out / name)
        except ValueError:
            return True
        return False
    return False


def move_aside(run: Run) -> Path:
    """Rename a run folder with other settings to ``<out>.stale-<time>`` so the run starts afresh."""
    out = Path(run.out)
    dest = out.with_name(f"{out.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    out.rename(dest)
    return dest
