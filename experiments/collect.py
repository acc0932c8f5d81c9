"""Build results/<name>/ from whatever runs have finished: table.md, table.csv, transfer_curve.png,
runs.jsonl and splits.json (and for a config with several pretraining budgets budget_curve.png, its
table.csv then per task and budget); and a TensorBoard embedding-projector view of test-slice
features from each encoder under runs/<name>/embeddings.

Reading the records (``experiments.records``), the statistics (``experiments.stats``) and the
rendering (``experiments.render``) are separate steps; this module only strings them together.
"""
from __future__ import annotations

from pathlib import Path

from atomicio import write_bytes, write_text
from engine import git_info, machine_info, read_json

from . import render
from .embeddings import write_embeddings
from .grid import split_path
from .records import read_records, records_text, run_records
from .stats import budget_growth, cell_stats


def train_volumes(cfg: dict, split: dict) -> str:
    """'1% = 2, 10% = 21, ...' labelled volumes per fraction (the same for every label seed)."""
    first = next(iter(split.get("label_fractions", {}).values()), {})
    return ", ".join(f"{f * 100:g}% = {len(first[repr(f)])}" for f in cfg["fractions"] if repr(f) in first)


def header_of(cfg: dict, rows: list[dict], split: dict, records) -> dict:
    """What table.md says of where its numbers came from."""
    subject_of = split.get("groups") or {}
    ft = [r for r in rows if r["kind"] == "finetune"]
    test = split.get("test", [])
    return {"command": f"python -m experiments reproduce --config {cfg['config_path']}",
            "commit": ", ".join(sorted({r.get("commit") or "unknown" for r in rows})) if rows else git_info()["commit"],
            "dirty": any(r.get("dirty") for r in rows),
            "machine": (ft[0].get("machine") or {}).get("host") if ft else machine_info()["host"],
            "finished_runs": len(rows), "test_cases": len(test), "test_subjects": len({subject_of.get(c, c) for c in test}),
            "validation": "validation_of" in split, "wall_time_min": sum(r.get("wall_time_s") or 0 for r in rows) / 60,
            "train_volumes": train_volumes(cfg, split),
            "recomputed": None if records is None else
            f"python -m experiments collect --config {cfg['config_path']} --records {records} "
            f"(commit `{git_info()['commit']}`)"}


def budget_table(cfg: dict, stats: dict, rows: list[dict], subject_of: dict) -> list[dict]:
    """The rows of a budget config's table (none unless it pretrains at several budgets)."""
    budgets = cfg["pretrain"]["budgets"]
    if len(budgets) < 2:
        return []
    growth = {(a, i, f): budget_growth(rows, subject_of, a, i, f, min(budgets), max(budgets))
              for a in cfg["archs"] for i in cfg["inits"] for f in cfg["fractions"] if i in cfg["tasks"]}
    return render.budget_rows(cfg, stats, rows, growth)


def collect(cfg: dict, embeddings: bool = True, records: str | Path | None = None) -> Path:
    """Write results/<name>/ from the finished runs; returns the folder.

    ``records``: a ``runs.jsonl`` of an earlier collection (its ``splits.json`` beside it) to
    recompute table.md, table.csv and the plots from, without the run folders; the records and
    the split are left as they are."""
    res = Path(cfg["results_dir"])
    res.mkdir(parents=True, exist_ok=True)
    rows = run_records(cfg) if records is None else read_records(Path(records))
    split = read_json(Path(split_path(cfg)) if records is None else Path(records).with_name("splits.json")) or {}
    subject_of = split.get("groups") or {}
    stats = cell_stats(cfg, rows, subject_of)
    budget = budget_table(cfg, stats, rows, subject_of)
    if records is None:
        write_text(res / "runs.jsonl", records_text(rows))
    write_text(res / "table.csv", render.budget_csv(budget) if budget else render.table_csv(cfg, stats))
    write_text(res / "table.md", render.table_md(cfg, stats, rows, header_of(cfg, rows, split, records), budget))
    render.transfer_curve(cfg, stats, res / "transfer_curve.png")
    if budget:
        render.budget_curve(budget, res / "budget_curve.png", f"What more pretraining buys: {cfg['name']}")
    if split and records is None:
        write_bytes(res / "splits.json", Path(split_path(cfg)).read_bytes())
    ft = [r for r in rows if r["kind"] == "finetune"]
    if embeddings and ft and records is None:
        write_embeddings(cfg)
    print(f"collected {len(ft)} fine-tuning and {len(rows) - len(ft)} pretraining runs -> {res}/")
    return res
