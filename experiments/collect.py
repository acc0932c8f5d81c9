"""Build results/<name>/ from whatever runs have finished: table.md, table.csv,
transfer_curve.png, runs.jsonl and splits.json; and a TensorBoard embedding-projector view of
test-slice features from each encoder under runs/<name>/embeddings.

Per cell (architecture, init, label fraction): n replicates, mean and sd of the test Dice over
them, the number of collapsed runs (a foreground class with mean test Dice < 0.05), and for
every init but random the paired difference from random init over the replicates both have
(``n_paired`` of them), with a 95% CI from a hierarchical bootstrap (experiments.stats); no CI
from a single replicate. Runs compared with each other must share their test cases.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path


from atomicio import atomic_path, write_bytes, write_text
from engine import git_info, machine_info, read_json

from .embeddings import write_embeddings
from .grid import finetune_runs, pretrain_runs, split_path
from .stats import hierarchical_bootstrap, subject_sums

# The source document's table (DESIGN.md): Dice by init and label fraction, dataset unstated.
REFERENCE = {"random": (0.32, 0.65, 0.82), "ImageNet": (0.41, 0.72, 0.85), "self-supervised": (0.53, 0.78, 0.87)}
INIT_ORDER = ("random", "imagenet", "rotation", "jigsaw", "simclr")
COLLAPSE = 0.05  # a run has collapsed when a foreground class scores a mean test Dice below this
COLUMNS = ["arch", "init", "fraction", "n", "mean_dice", "sd", "delta_vs_random", "ci95_low", "ci95_high", "collapsed",
           "n_paired"]
FEW_LABEL_SEEDS = 5  # below this, a bootstrap over label seeds is coarse and its CIs tend to be too narrow


def run_records(cfg: dict) -> list[dict]:
    """One record per finished run (pretraining and fine-tuning), with what the statistics need."""
    rows = []
    for run in pretrain_runs(cfg):
        s, c = read_json(Path(run.out) / "summary.json"), read_json(Path(run.out) / "config.json") or {}
        if not s or s.get("status") != "done":
            continue
        prov = c.get("provenance", {})
        rows.append({"kind": "pretrain", "key": run.key, **run.cell, "out": run.out,
                     "command": "python -m pretrain " + " ".join(run.argv),
                     **{k: s.get(k) for k in ("final_accuracy", "chance", "knn_accuracy", "knn_accuracy_start",
                                               "wall_time_s")},
                     "steps": s.get("step"), "seed": c.get("args", {}).get("seed"), "cases": c.get("cases"),
                     "commit": prov.get("commit"), "dirty": prov.get("dirty"), "machine": prov.get("machine")})
    for run in finetune_runs(cfg):
        m = read_json(Path(run.out) / "metrics.json")
        if not m or "mean_dice" not in m:
            continue
        rows.append({"kind": "finetune", "key": run.key, **run.cell, "out": run.out,
                     "command": "python -m finetune " + " ".join(run.argv),
                     **{k: m.get(k) for k in ("mean_dice", "dice_per_class", "mean_hd95", "hd95_per_class",
                                                "train_cases", "test_cases", "wall_time_s", "commit", "dirty",
                                                "machine", "steps")},
                     "cases": [{"case_id": c["case_id"], "dice": c["dice"], "mean_dice": c["mean_dice"]} for c in m["cases"]],
                     "collapsed": min(m["dice_per_class"].values()) < COLLAPSE,
                     "init_info": m.get("init"), "identity": m.get("identity")})
    return rows


def _inits(cfg):
    return [i for i in INIT_ORDER if i in cfg["inits"]] + [i for i in cfg["inits"] if i not in INIT_ORDER]


def _by_replicate(rows, arch, init, fraction) -> dict[tuple[int, int], dict]:
    return {(r["label_seed"], r["seed"]): r for r in rows
            if r["kind"] == "finetune" and (r["arch"], r["init"], r["fraction"]) == (arch, init, fraction)}


def check_same_cases(runs) -> None:
    """Runs compared with each other must have been scored on the same test cases (ValueError naming one that was not)."""
    sets = [(r["out"], frozenset(c["case_id"] for c in r["cases"])) for r in runs]
    for out, cases in sets[1:]:
        if cases != sets[0][1]:
            raise ValueError(f"{out} was scored on {len(cases)} test cases and {sets[0][0]} on {len(sets[0][1])} "
                             f"({len(cases ^ sets[0][1])} differ): runs on other test cases cannot be compared")


def cell_stats(cfg: dict, rows: list[dict], subject_of: dict[str, str], n_boot: int = 4000) -> dict:
    """(arch, init, fraction) -> n, mean, sd, collapsed, the mean's CI and the paired difference from random.

    CIs need two replicates: with one, a bootstrap would vary the test subjects only, not the
    training runs, so ``mean_low`` / ``low`` stay None."""
    out = {}
    for arch in cfg["archs"]:
        for f in cfg["fractions"]:
            ref = _by_replicate(rows, arch, "random", f)
            for init in _inits(cfg):
                reps = _by_replicate(rows, arch, init, f)
                if not reps:
                    continue
                paired = sorted(set(reps) & set(ref))
                check_same_cases(list(reps.values()) + [ref[k] for k in paired])
                test = sorted({c["case_id"] for r in reps.values() for c in r["cases"]})
                subjects = sorted({subject_of.get(c, c) for c in test})
                dice = [r["mean_dice"] for r in reps.values()]
                st = {"n": len(reps), "mean": statistics.fmean(dice), "sd": statistics.stdev(dice) if len(dice) > 1 else None,
                      "collapsed": sum(r["collapsed"] for r in reps.values()), "replicates": sorted(reps),
                      "test_subjects": len(subjects), "mean_low": None, "mean_high": None}
                sums = {k: subject_sums(r["cases"], subject_of, subjects) for k, r in reps.items()}
                counts = next(iter(sums.values()))[1]
                if len(reps) > 1:
                    _, st["mean_low"], st["mean_high"] = hierarchical_bootstrap({k: s for k, (s, _) in sums.items()},
                                                                                counts, n_boot)
                if init != "random" and paired:
                    diffs = {}
                    for k in paired:
                        by_case = {c["case_id"]: c["mean_dice"] for c in ref[k]["cases"]}
                        cases = [{"case_id": c["case_id"], "mean_dice": c["mean_dice"] - by_case[c["case_id"]]}
                                 for c in reps[k]["cases"]]
                        diffs[k] = subject_sums(cases, subject_of, subjects)[0]
                    st["paired"], st["paired_label_seeds"] = len(paired), len({l for l, _ in paired})
                    st["delta"], low, high = hierarchical_bootstrap(diffs, counts, n_boot)
                    st["low"], st["high"] = (low, high) if len(paired) > 1 else (None, None)
                out[(arch, init, f)] = st
    return out


def _fmt(x, digits=4):
    return "" if x is None else f"{x:.{digits}f}"


def table_csv(cfg: dict, stats: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for arch in cfg["archs"]:
        for f in cfg["fractions"]:
            for init in _inits(cfg):
                s = stats.get((arch, init, f))
                if s:
                    w.writerow([arch, init, f, s["n"], _fmt(s["mean"]), _fmt(s["sd"]), _fmt(s.get("delta")),
                                _fmt(s.get("low")), _fmt(s.get("high")), s["collapsed"], s.get("paired", "")])
                else:
                    w.writerow([arch, init, f, 0, "", "", "", "", "", 0, ""])
    return buf.getvalue()


def excludes_zero(s: dict) -> bool:
    return s.get("low") is not None and (s["low"] > 0 or s["high"] < 0)


def findings(cfg: dict, stats: dict) -> list[str]:
    """What the table shows and does not show, in sentences."""
    shown, not_shown, few = [], [], False
    for (arch, init, f), s in sorted(stats.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if init == "random":
            continue
        where = f"{init} init with {arch} at {f * 100:g}% labels"
        if s.get("delta") is None:
            not_shown.append(f"{where}: no random-init run of the same replicates to compare with.")
            continue
        if s["low"] is None:
            not_shown.append(f"{where}: {s['delta']:+.3f} Dice vs random from 1 paired replicate, so no CI (one "
                             "training run per init cannot show how much runs vary): no difference is shown.")
            continue
        reps = f"{s['paired']} paired replicates over {s['paired_label_seeds']} label seeds"
        if s["paired_label_seeds"] < FEW_LABEL_SEEDS:
            reps, few = reps + " †", True
        text = f"{where}: {s['delta']:+.3f} Dice vs random (95% CI {s['low']:+.3f} to {s['high']:+.3f}, {reps})"
        if excludes_zero(s):
            shown.append(f"{text}: the CI excludes 0.")
        else:
            not_shown.append(f"{text}: the CI includes 0, so no difference is shown (nor shown to be absent).")
    lines = ["## What this shows", ""]
    lines += [f"- {t}" for t in shown] or ["- No init differs from random init with a 95% CI that excludes 0."]
    lines += ["", "## What it does not show", ""]
    lines += [f"- {t}" for t in not_shown]
    goal = [k for k, s in stats.items() if k[1] != "random" and s.get("low") is not None and s["low"] >= 0.10]
    lines += [f"- A gain of +0.10 Dice or more (the goal) with a CI that excludes smaller gains: "
              f"{'shown for ' + ', '.join(f'{i} {a} {f * 100:g}%' for a, i, f in goal) if goal else 'not shown anywhere'}."]
    collapsed = sum(s["collapsed"] for s in stats.values())
    total = sum(s["n"] for s in stats.values())
    lines += [f"- Collapsed runs (a foreground class below {COLLAPSE} mean Dice): {collapsed} of {total}; they stay in the means."]
    if few:
        lines += ["", f"† Fewer than {FEW_LABEL_SEEDS} label seeds: a bootstrap that resamples so few is coarse, and "
                  "its CI is likely too narrow; read an excluded 0 there as a lead, not a finding."]
    return lines


def delta_text(s: dict, n_ref: int | None = None) -> str:
    """'+0.012 (+0.003 to +0.021)', '+0.012 (1 replicate, no CI)', with ', k paired' when not every run has a partner."""
    if s.get("delta") is None:
        return ""
    ci = f"{s['low']:+.3f} to {s['high']:+.3f}" if s.get("low") is not None else "1 replicate, no CI"
    if s["paired"] < s["n"] or (n_ref is not None and s["paired"] < n_ref):
        ci += f", {s['paired']} paired"
    return f"{s['delta']:+.3f} ({ci})"


def table_md(cfg: dict, stats: dict, rows: list[dict], header: dict) -> str:
    held_out = ("validation volumes (a part of the training pool; the test set is left out altogether)"
                if header["validation"] else "held-out test volumes")
    lines = [f"# Transfer table: {cfg['name']}", "",
             f"{'Validation' if header['validation'] else 'Test'} Dice: per-volume 3D Dice, mean over the "
             f"{header['test_cases']} {held_out} ({header['test_subjects']} subjects) and the foreground classes; "
             f"encoder `{cfg['encoder']}`, data "
             f"`{cfg['data']}`. n: replicates, each a (label seed, training seed) pair; mean and sd over them. "
             "Delta: paired difference from random init over the same replicates, with a 95% CI from a hierarchical "
             "bootstrap (label seeds, then training seeds, then test subjects); **bold** where the CI excludes 0. "
             "A cell with one (paired) replicate gets no CI: it would cover the test subjects only, not how much "
             f"training runs vary; with fewer than {FEW_LABEL_SEEDS} label seeds the bootstrap's top level is coarse "
             "and its CIs are likely too narrow. "
             f"Collapsed: runs in which a foreground class scored a mean Dice below {COLLAPSE}. "
             f"Labelled training volumes per fraction: {header['train_volumes']}.", ""]
    for arch in cfg["archs"]:
        lines += [f"## {arch}", "", "| fraction | init | n | mean Dice (95% CI) | sd | delta vs random (95% CI) | collapsed |",
                  "|---|---|---|---|---|---|---|"]
        for f in cfg["fractions"]:
            for init in _inits(cfg):
                s = stats.get((arch, init, f))
                if not s:
                    continue
                delta = delta_text(s, stats.get((arch, "random", f), {}).get("n"))
                delta = f"**{delta}**" if excludes_zero(s) else delta
                mean = f"{s['mean']:.3f}" + (f" ({s['mean_low']:.3f}-{s['mean_high']:.3f})" if s["mean_low"] is not None else "")
                lines.append(f"| {f * 100:g}% | {init} | {s['n']} | {mean} "
                             f"| {_fmt(s['sd'], 3) or '-'} | {delta or '-'} | {s['collapsed']} |")
        lines.append("")
    if any(init != "random" for _, init, _ in stats):
        lines += findings(cfg, stats)
    pre = [r for r in rows if r["kind"] == "pretrain"]
    if pre:
        low = min(cfg["fractions"])
        lines += ["", "## Encoders", "",
                  "What each encoder learned, next to what it gives: the pretext metric over the last epoch, a k-NN "
                  "probe (accuracy of a 20-nearest-neighbour vote on pooled encoder features for a slice task derived "
                  "from labels: which of head / body / both / neither a slice shows; reference and query slices from "
                  "disjoint subjects of the training pool), before (random encoder) and after pretraining, and the "
                  f"transfer at {low * 100:g}% labels.", "",
                  "| task | steps | pretext metric (chance) | k-NN probe: random -> pretrained | "
                  + " | ".join(f"{a} {low * 100:g}% delta (95% CI)" for a in cfg["archs"]) + " |",
                  "|---|---|---|---|" + "---|" * len(cfg["archs"])]
        for r in pre:
            knn = (f"{r['knn_accuracy_start']:.3f} -> {r['knn_accuracy']:.3f}"
                   if r.get("knn_accuracy") is not None and r.get("knn_accuracy_start") is not None else "-")
            transfer = []
            for arch in cfg["archs"]:
                s = stats.get((arch, r["task"], low), {})
                transfer.append(delta_text(s) or "-")
            lines.append(f"| {r['task']} | {r['steps']} | {r['final_accuracy']:.3f} ({r['chance']:.3f}) | {knn} | "
                         + " | ".join(transfer) + " |")
    lines += ["", "Reference: the source document's table (its dataset and protocol are not ours; shown for "
              "comparison only):", "", "| init | 1% | 10% | 100% |", "|---|---|---|---|"]
    lines += [f"| {k} | " + " | ".join(f"{v:.2f}" for v in vals) + " |" for k, vals in REFERENCE.items()]
    lines += ["", "Produced by:", "", f"    {header['command']}", "",
              f"config `{cfg['config_path']}`, commit `{header['commit']}`{' (dirty tree)' if header['dirty'] else ''}, "
              f"machine {header['machine']}, {header['finished_runs']} finished runs, total run wall time "
              f"{header['wall_time_min']:.1f} min. Per-run records: `runs.jsonl`; split: `splits.json`.", ""]
    if header.get("recomputed"):
        lines += ["Tables and plot recomputed from those records (no run re-run) by:", "",
                  f"    {header['recomputed']}", ""]
    return "\n".join(lines)


def transfer_curve(cfg: dict, stats: dict, path: Path) -> None:
    """Top: mean test Dice per init with its 95% CI; bottom: the paired difference from random with its CI."""
    import matplotlib  # imported on use: only the collector plots
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs, inits = cfg["archs"], _inits(cfg)
    fig, axes = plt.subplots(2, len(archs), figsize=(5.5 * len(archs), 7.5), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for col, arch in enumerate(archs):
        top, bottom = axes[0][col], axes[1][col]
        for k, init in enumerate(inits):
            offset = 1 + 0.06 * (k - (len(inits) - 1) / 2)  # spread the markers so the bars do not overlap
            pts = [(f, stats[(arch, init, f)]) for f in cfg["fractions"] if (arch, init, f) in stats]
            if not pts:
                continue
            x = [100 * f * offset for f, _ in pts]
            y = [s["mean"] for _, s in pts]
            err = [[s["mean"] - s["mean_low"] if s["mean_low"] is not None else 0 for _, s in pts],
                   [s["mean_high"] - s["mean"] if s["mean_high"] is not None else 0 for _, s in pts]]
            line = top.errorbar(x, y, yerr=err, marker="o", capsize=3, label=init)
            d = [(xx, s) for xx, (_, s) in zip(x, pts) if s.get("delta") is not None]
            if d:
                bottom.errorbar([xx for xx, _ in d], [s["delta"] for _, s in d],
                                yerr=[[s["delta"] - s["low"] if s["low"] is not None else 0 for _, s in d],
                                      [s["high"] - s["delta"] if s["high"] is not None else 0 for _, s in d]],
                                marker="o", capsize=3, color=line[0].get_color(), linestyle="none")
        bottom.axhline(0, color="k", linewidth=0.8)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        top.set_title(f"{arch} ({cfg['encoder']})")
        bottom.set_xlabel("labelled training volumes (%)")
    axes[0][0].set_ylabel("mean test Dice (95% CI)")
    axes[1][0].set_ylabel("paired delta vs random (95% CI)")
    axes[0][-1].legend(loc="lower right")
    fig.suptitle(f"Transfer curve: {cfg['name']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def train_volumes(cfg: dict, split: dict) -> str:
    """'1% = 2, 10% = 21, ...' labelled volumes per fraction (the same for every label seed)."""
    first = next(iter(split.get("label_fractions", {}).values()), {})
    return ", ".join(f"{f * 100:g}% = {len(first[repr(f)])}" for f in cfg["fractions"] if repr(f) in first)


def read_records(path: Path) -> list[dict]:
    """The run records of a ``runs.jsonl`` written by :func:`collect` (ValueError naming the file and line)."""
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


def collect(cfg: dict, embeddings: bool = True, records: str | Path | None = None) -> Path:
    """Write results/<name>/ from the finished runs; returns the folder.

    ``records``: a ``runs.jsonl`` of an earlier collection (its ``splits.json`` beside it) to
    recompute table.md, table.csv and the plot from, without the run folders; the records and
    the split are left as they are."""
    res = Path(cfg["results_dir"])
    res.mkdir(parents=True, exist_ok=True)
    rows = run_records(cfg) if records is None else read_records(Path(records))
    split = read_json(Path(split_path(cfg)) if records is None else Path(records).with_name("splits.json")) or {}
    subject_of = split.get("groups") or {}
    stats = cell_stats(cfg, rows, subject_of)
    ft = [r for r in rows if r["kind"] == "finetune"]
    commits = sorted({r.get("commit") or "unknown" for r in rows})
    test = split.get("test", [])
    header = {"command": f"python -m experiments reproduce --config {cfg['config_path']}",
              "commit": ", ".join(commits) if rows else git_info()["commit"], "dirty": any(r.get("dirty") for r in rows),
              "machine": (ft[0].get("machine") or {}).get("host") if ft else machine_info()["host"],
              "finished_runs": len(rows), "test_cases": len(test),
              "test_subjects": len({subject_of.get(c, c) for c in test}), "validation": "validation_of" in split,
              "wall_time_min": sum(r.get("wall_time_s") or 0 for r in rows) / 60,
              "train_volumes": train_volumes(cfg, split),
              "recomputed": None if records is None else
              f"python -m experiments collect --config {cfg['config_path']} --records {records} "
              f"(commit `{git_info()['commit']}`)"}
    if records is None:
        write_text(res / "runs.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    write_text(res / "table.csv", table_csv(cfg, stats))
    write_text(res / "table.md", table_md(cfg, stats, rows, header))
    transfer_curve(cfg, stats, res / "transfer_curve.png")
    if split and records is None:
        write_bytes(res / "splits.json", Path(split_path(cfg)).read_bytes())
    if embeddings and ft and records is None:
        write_embeddings(cfg)
    print(f"collected {len(ft)} fine-tuning and {len(rows) - len(ft)} pretraining runs -> {res}/")
    return res
