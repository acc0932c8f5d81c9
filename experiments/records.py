"""The run records a table is made of: one per finished run, read from the run folders of a grid or
from the ``runs.jsonl`` an earlier collection wrote (the committed tables keep theirs)."""
from __future__ import annotations

import json
from pathlib import Path

from engine import CONFIG, read_json
from slurm import RESULT

from .grid import finetune_runs, pretrain_runs
from .stats import COLLAPSE


def pretrain_record(run) -> dict | None:
    """What a table says of a finished pretraining run (None while it is not finished)."""
    s = read_json(Path(run.out) / RESULT["pretrain"])
    if not s or s.get("status") != "done":
        return None
    c = read_json(Path(run.out) / CONFIG) or {}
    prov = c.get("provenance", {})
    return {"kind": "pretrain", "key": run.key, **run.cell, "out": run.out, "command": "python -m pretrain " + " ".join(run.argv),
            **{k: s.get(k) for k in ("final_accuracy", "chance", "metric", "knn_accuracy", "knn_accuracy_start",
                                     "wall_time_s")},
            "steps": s.get("step"), "cases": c.get("cases"), "commit": prov.get("commit"), "dirty": prov.get("dirty"),
            "machine": prov.get("machine")}


def finetune_record(run) -> dict | None:
    """What a table needs of a finished fine-tuning run: its cell, per-case Dice, provenance (None while unfinished)."""
    m = read_json(Path(run.out) / RESULT["finetune"])
    if not m or "mean_dice" not in m:
        return None
    return {"kind": "finetune", "key": run.key, **run.cell, "out": run.out, "command": "python -m finetune " + " ".join(run.argv),
            **{k: m.get(k) for k in ("mean_dice", "dice_per_class", "mean_hd95", "hd95_per_class", "train_cases",
                                     "test_cases", "wall_time_s", "commit", "dirty", "machine", "steps")},
            "cases": [{"case_id": c["case_id"], "dice": c["dice"], "mean_dice": c["mean_dice"]} for c in m["cases"]],
            "collapsed": min(m["dice_per_class"].values()) < COLLAPSE,
            "init_info": {k: v for k, v in (m.get("init") or {}).items() if k != "transferred"},
            "identity": m.get("identity")}


def run_records(cfg: dict) -> list[dict]:
    """One record per finished run of the grid (pretraining first)."""
    rows = [pretrain_record(r) for r in pretrain_runs(cfg)] + [finetune_record(r) for r in finetune_runs(cfg)]
    return [r for r in rows if r is not None]


def read_records(path: Path) -> list[dict]:
    """The run records of a ``runs.jsonl`` written by ``experiments collect`` (ValueError naming the file and line)."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read run records: {e.strerror}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON record ({e.msg})") from None
        if row.get("kind") not in ("pretrain", "finetune"):
            raise ValueError(f"{path}:{i}: not a run record of `experiments collect` (no kind pretrain / finetune)")
        rows.append(row)
    return rows


def records_text(rows: list[dict]) -> str:
    """``runs.jsonl``: one sorted-key JSON object per line."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
