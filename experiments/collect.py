"""Build results/<name>/ from whatever runs have finished: table.md, table.csv,
transfer_curve.png, runs.jsonl and splits.json; and a TensorBoard embedding-projector view of
test-slice features from each encoder under runs/<name>/embeddings."""
from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path

from atomicio import atomic_path, write_bytes, write_text
from engine import git_info, machine_info, read_json

from .embeddings import write_embeddings
from .grid import finetune_runs, pretrain_runs, split_path

# The source document's table (DESIGN.md): Dice by init and label fraction, dataset unstated.
REFERENCE = {"random": (0.32, 0.65, 0.82), "ImageNet": (0.41, 0.72, 0.85), "self-supervised": (0.53, 0.78, 0.87)}
INIT_ORDER = ("random", "imagenet", "rotation", "jigsaw", "simclr")


def run_records(cfg: dict) -> list[dict]:
    """One record per finished run (pretraining and fine-tuning)."""
    rows = []
    for run in pretrain_runs(cfg):
        s, c = read_json(Path(run.out) / "summary.json"), read_json(Path(run.out) / "config.json") or {}
        if not s or s.get("status") != "done":
            continue
        prov = c.get("provenance", {})
        rows.append({"kind": "pretrain", "key": run.key, **run.cell, "out": run.out,
                     "command": "python -m pretrain " + " ".join(run.argv), "final_accuracy": s.get("final_accuracy"),
                     "chance": s.get("chance"), "steps": s.get("step"), "seed": c.get("args", {}).get("seed"),
                     "cases": c.get("cases"), "commit": prov.get("commit"), "dirty": prov.get("dirty"),
                     "machine": prov.get("machine"), "wall_time_s": s.get("wall_time_s")})
    for run in finetune_runs(cfg):
        m = read_json(Path(run.out) / "metrics.json")
        if not m or "mean_dice" not in m:
            continue
        rows.append({"kind": "finetune", "key": run.key, **run.cell, "out": run.out,
                     "command": "python -m finetune " + " ".join(run.argv),
                     **{k: m.get(k) for k in ("mean_dice", "dice_per_class", "mean_hd95", "hd95_per_class",
                                                "train_cases", "test_cases", "wall_time_s", "commit", "dirty",
                                                "machine", "steps")},
                     "init_info": m.get("init"), "identity": m.get("identity")})
    return rows


def aggregate(rows: list[dict]) -> dict:
    """(init, arch, fraction) -> {"mean", "std", "n", "seeds"} over seeds."""
    groups = defaultdict(list)
    for r in rows:
        if r["kind"] == "finetune":
            groups[(r["init"], r["arch"], r["fraction"])].append((r["seed"], r["mean_dice"]))
    out = {}
    for k, vals in groups.items():
        d = [v for _, v in vals]
        out[k] = {"mean": statistics.fmean(d), "std": statistics.stdev(d) if len(d) > 1 else 0.0,
                  "n": len(d), "seeds": sorted(s for s, _ in vals)}
    return out


def _inits(cfg):
    return [i for i in INIT_ORDER if i in cfg["inits"]] + [i for i in cfg["inits"] if i not in INIT_ORDER]


def table_csv(cfg: dict, agg: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["init", "arch", "fraction", "mean_dice", "std_dice", "n_seeds", "seeds"])
    for arch in cfg["archs"]:
        for init in _inits(cfg):
            for f in cfg["fractions"]:
                a = agg.get((init, arch, f))
                if a:
                    std = f"{a['std']:.4f}" if a["n"] > 1 else ""  # one seed: no spread to report
                    w.writerow([init, arch, f, f"{a['mean']:.4f}", std, a["n"], " ".join(map(str, a["seeds"]))])
                else:
                    w.writerow([init, arch, f, "", "", 0, ""])
    return buf.getvalue()


def table_md(cfg: dict, agg: dict, rows: list[dict], header: dict) -> str:
    fr = cfg["fractions"]
    cols = [f"{arch} {f * 100:g}%" for arch in cfg["archs"] for f in fr]
    lines = [f"# Transfer table: {cfg['name']}", "",
             f"Mean test Dice (per-volume 3D Dice, mean over test cases and foreground classes), "
             + (f"mean +- std over seeds {cfg['seeds']}" if len(cfg["seeds"]) > 1 else f"one seed ({cfg['seeds'][0]}): no spread")
             + f"; encoder `{cfg['encoder']}`; data `{cfg['data']}`; {header.get('test_cases', '?')} held-out test cases; "
             f"labelled training volumes per fraction (seed {cfg['seeds'][0]}): {header.get('train_volumes', '?')}.", "",
             "| init | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for init in _inits(cfg):
        cells = []
        for arch in cfg["archs"]:
            for f in fr:
                a = agg.get((init, arch, f))
                cells.append("-" if not a else f"{a['mean']:.3f}" + (f" +- {a['std']:.3f}" if a["n"] > 1 else "")
                             + (f" (n={a['n']})" if a["n"] != len(cfg["seeds"]) else ""))
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    pre = [r for r in rows if r["kind"] == "pretrain"]
    if pre:
        lines += ["", "Pretext accuracy at the end of pretraining (last epoch, training pool):", "",
                  "| task | accuracy | chance | steps |", "|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['final_accuracy']:.3f} | {r['chance']:.3f} | {r['steps']} |" for r in pre]
    lines += ["", "Reference: the source document's table (its dataset and protocol are not ours; shown for "
              "comparison only):", "", "| init | 1% | 10% | 100% |", "|---|---|---|---|"]
    lines += [f"| {k} | " + " | ".join(f"{v:.2f}" for v in vals) + " |" for k, vals in REFERENCE.items()]
    lines += ["", "Produced by:", "", f"    {header['command']}", "",
              f"config `{cfg['config_path']}`, commit `{header.get('commit')}`{' (dirty tree)' if header.get('dirty') else ''}, "
              f"machine {header.get('machine')}, {header['finished_runs']} finished runs, total run wall time "
              f"{header['wall_time_min']:.1f} min. Per-run records: `runs.jsonl`; split: `splits.json`.", ""]
    return "\n".join(lines)


def transfer_curve(cfg: dict, agg: dict, path: Path) -> None:
    import matplotlib  # imported on use: only the collector plots
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg["archs"]), figsize=(5 * len(cfg["archs"]), 4), sharey=True, squeeze=False)
    for ax, arch in zip(axes[0], cfg["archs"]):
        for init in _inits(cfg):
            pts = [(f, agg[(init, arch, f)]) for f in cfg["fractions"] if (init, arch, f) in agg]
            if pts:
                ax.errorbar([100 * f for f, _ in pts], [a["mean"] for _, a in pts], yerr=[a["std"] for _, a in pts],
                            marker="o", capsize=3, label=init)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training volumes (%)")
        ax.set_title(f"{arch} ({cfg['encoder']})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean test Dice")
    axes[0][-1].legend(loc="lower right")
    fig.suptitle(f"Transfer curve: {cfg['name']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def train_volumes(cfg: dict) -> dict:
    """fraction -> number of labelled training volumes for the first seed, from the split file."""
    split = read_json(Path(split_path(cfg))) or {}
    fractions = split.get("label_fractions", {}).get(str(cfg["seeds"][0]), {})
    return {f: len(fractions[str(f)]) for f in cfg["fractions"] if str(f) in fractions}


def collect(cfg: dict, embeddings: bool = True) -> Path:
    """Write results/<name>/ from the finished runs; returns the folder."""
    res = Path(cfg["results_dir"])
    res.mkdir(parents=True, exist_ok=True)
    rows = run_records(cfg)
    agg = aggregate(rows)
    ft = [r for r in rows if r["kind"] == "finetune"]
    commits = sorted({r.get("commit") or "unknown" for r in rows})
    g = git_info()
    header = {"command": f"python -m experiments reproduce --config {cfg['config_path']}",
              "commit": ", ".join(commits) if rows else g["commit"], "dirty": any(r.get("dirty") for r in rows),
              "machine": (ft[0].get("machine") or {}).get("host") if ft else machine_info()["host"],
              "finished_runs": len(rows), "test_cases": len(ft[0]["test_cases"]) if ft and ft[0].get("test_cases") else "?",
              "wall_time_min": sum(r.get("wall_time_s") or 0 for r in rows) / 60,
              "train_volumes": ", ".join(f"{f * 100:g}% = {n}" for f, n in train_volumes(cfg).items())}
    write_text(res / "runs.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    write_text(res / "table.csv", table_csv(cfg, agg))
    write_text(res / "table.md", table_md(cfg, agg, rows, header))
    transfer_curve(cfg, agg, res / "transfer_curve.png")
    if Path(split_path(cfg)).is_file():
        write_bytes(res / "splits.json", Path(split_path(cfg)).read_bytes())
    if embeddings and ft:
        write_embeddings(cfg)
    print(f"collected {len(ft)} fine-tuning and {len(rows) - len(ft)} pretraining runs -> {res}/")
    return res
