"""What a table looks like: table.csv, table.md (with what it shows and does not show, in words),
the transfer curve, and for a pretraining-budget config the budget table and curve. Nothing here
computes a statistic: the cells come from ``experiments.stats``."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from atomicio import atomic_path

from .config import BASE_INITS
from .stats import COLLAPSE

# The source document's table (DESIGN.md): Dice by init and label fraction, dataset unstated.
REFERENCE = {"random": (0.32, 0.65, 0.82), "ImageNet": (0.41, 0.72, 0.85), "self-supervised": (0.53, 0.78, 0.87)}
INIT_ORDER = ("random", "imagenet", "rotation", "jigsaw", "simclr", "restore")
COLUMNS = ["arch", "init", "fraction", "n", "mean_dice", "sd", "delta_vs_random", "ci95_low", "ci95_high", "collapsed",
           "n_paired", "pretrain_seeds"]
BUDGET_COLUMNS = ["task", "pretrain_steps", "budget", "arch", "fraction", "n", "n_paired", "pretrain_seeds", "mean_dice",
                  "delta_vs_random", "ci95_low", "ci95_high", "collapsed"]
FEW_LABEL_SEEDS = 5  # below this, a bootstrap over label seeds is coarse and its CIs tend to be too narrow


def inits(cfg: dict) -> list[str]:
    return [i for i in INIT_ORDER if i in cfg["inits"]] + [i for i in cfg["inits"] if i not in INIT_ORDER]


def budgets_of(cfg: dict, init: str) -> list[int]:
    return [1] if init in BASE_INITS else cfg["pretrain"]["budgets"]


def init_name(init: str, budget: int) -> str:
    return init + (f"@{budget}x" if budget != 1 else "")


def _fmt(x, digits=4):
    return "" if x is None else f"{x:.{digits}f}"


def excludes_zero(s: dict) -> bool:
    return s.get("low") is not None and (s["low"] > 0 or s["high"] < 0)


def table_csv(cfg: dict, stats: dict) -> str:
    """``arch, init, fraction, n, mean_dice, sd, delta_vs_random, ci95_low, ci95_high, collapsed, n_paired,
    pretrain_seeds``: one row per cell (an init pretrained at another budget is named ``init@Nx``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for arch in cfg["archs"]:
        for f in cfg["fractions"]:
            for init in inits(cfg):
                for budget in budgets_of(cfg, init):
                    s = stats.get((arch, init, budget, f))
                    name = init_name(init, budget)
                    if s:
                        w.writerow([arch, name, f, s["n"], _fmt(s["mean"]), _fmt(s["sd"]), _fmt(s.get("delta")),
                                    _fmt(s.get("low")), _fmt(s.get("high")), s["collapsed"], s.get("paired", ""),
                                    s["pretrain_seeds"] or ""])
                    else:
                        w.writerow([arch, name, f, 0, "", "", "", "", "", 0, "", ""])
    return buf.getvalue()


def rests_on(s: dict) -> str:
    """'20 paired replicates over 10 label seeds and 3 pretraining runs' (with † when there are few label seeds)."""
    text = f"{s['paired']} paired replicates over {s['paired_label_seeds']} label seeds"
    if s["pretrain_seeds"]:
        text += f" and {s['pretrain_seeds']} pretraining run{'s' if s['pretrain_seeds'] > 1 else ''}"
    return text + (" †" if s["paired_label_seeds"] < FEW_LABEL_SEEDS else "")


def findings(cfg: dict, stats: dict, goal: float = 0.05) -> list[str]:
    """What the table shows and does not show, in sentences."""
    shown, not_shown, few = [], [], False
    for (arch, init, budget, f), s in sorted(stats.items(), key=lambda kv: (kv[0][0], kv[0][3], kv[0][1], kv[0][2])):
        if init == "random":
            continue
        where = f"{init_name(init, budget)} init with {arch} at {f * 100:g}% labels"
        if s.get("delta") is None:
            not_shown.append(f"{where}: no random-init run of the same replicates to compare with.")
            continue
        if s["low"] is None:
            not_shown.append(f"{where}: {s['delta']:+.3f} Dice vs random from 1 paired replicate, so no CI (one "
                             "training run per init cannot show how much runs vary): no difference is shown.")
            continue
        few = few or s["paired_label_seeds"] < FEW_LABEL_SEEDS
        text = f"{where}: {s['delta']:+.3f} Dice vs random (95% CI {s['low']:+.3f} to {s['high']:+.3f}, {rests_on(s)})"
        if excludes_zero(s):
            shown.append(f"{text}: the CI excludes 0.")
        else:
            not_shown.append(f"{text}: the CI includes 0, so no difference is shown (nor shown to be absent).")
    lines = ["## What this shows", ""]
    lines += [f"- {t}" for t in shown] or ["- No init differs from random init with a 95% CI that excludes 0."]
    lines += ["", "## What it does not show", ""]
    lines += [f"- {t}" for t in not_shown]
    reached = [k for k, s in stats.items() if k[1] != "random" and s.get("low") is not None and s["low"] >= goal]
    lines += [f"- A gain of +{goal:.2f} Dice or more (the goal) with a CI that excludes smaller gains: "
              + (f"shown for {', '.join(f'{init_name(i, b)} {a} {f * 100:g}%' for a, i, b, f in reached)}."
                 if reached else "not shown anywhere.")]
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


def intro(cfg: dict, header: dict) -> list[str]:
    held_out = ("validation volumes (a part of the training pool; the test set is left out altogether)"
                if header["validation"] else "held-out test volumes")
    seeds = cfg["pretrain"]["seeds"]
    return [f"# Transfer table: {cfg['name']}", "",
            f"{'Validation' if header['validation'] else 'Test'} Dice: per-volume 3D Dice, mean over the "
            f"{header['test_cases']} {held_out} ({header['test_subjects']} subjects) and the foreground classes; "
            f"encoder `{cfg['encoder']}`, data `{cfg['data']}`. n: replicates, each a (label seed, training seed) "
            f"pair; mean and sd over them. Each pretext task was pretrained {len(seeds)} time(s) (pretraining seeds "
            f"{seeds}); a replicate fine-tunes the encoder of pretraining seed `seeds[label seed % {len(seeds)}]`. "
            "Delta: paired difference from random init over the same replicates, with a 95% CI from a hierarchical "
            "bootstrap (pretraining runs, then label seeds, then training seeds, then test subjects); **bold** where "
            "the CI excludes 0; P: how many pretraining runs the cell rests on. A cell with one (paired) replicate "
            "gets no CI: it would cover the test subjects only, not how much training runs vary; with fewer than "
            f"{FEW_LABEL_SEEDS} label seeds the bootstrap's top level is coarse and its CIs are likely too narrow. "
            f"Collapsed: runs in which a foreground class scored a mean Dice below {COLLAPSE}. "
            f"Labelled training volumes per fraction: {header['train_volumes']}.", ""]


def cells_md(cfg: dict, stats: dict) -> list[str]:
    lines = []
    for arch in cfg["archs"]:
        lines += [f"## {arch}", "", "| fraction | init | n | P | mean Dice (95% CI) | sd | delta vs random (95% CI) | collapsed |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in cfg["fractions"]:
            for init in inits(cfg):
                for budget in budgets_of(cfg, init):
                    s = stats.get((arch, init, budget, f))
                    if not s:
                        continue
                    delta = delta_text(s, stats.get((arch, "random", 1, f), {}).get("n"))
                    delta = f"**{delta}**" if excludes_zero(s) else delta
                    mean = f"{s['mean']:.3f}" + (f" ({s['mean_low']:.3f}-{s['mean_high']:.3f})"
                                                 if s["mean_low"] is not None else "")
                    lines.append(f"| {f * 100:g}% | {init_name(init, budget)} | {s['n']} | {s['pretrain_seeds'] or '-'} "
                                 f"| {mean} | {_fmt(s['sd'], 3) or '-'} | {delta or '-'} | {s['collapsed']} |")
        lines.append("")
    return lines


def random_dice(rows: list[dict], arch: str, fraction: float) -> dict:
    """Random init's Dice per replicate ``(label_seed, seed)`` of one architecture and fraction."""
    return {(r["label_seed"], r["seed"]): r["mean_dice"] for r in rows if r["kind"] == "finetune"
            and r["init"] == "random" and r["arch"] == arch and r["fraction"] == fraction}


def run_transfer(rows: list[dict], pre: dict, arch: str, fraction: float, base: dict) -> str:
    """What one pretraining run's encoder gave: the mean paired difference from random init (``base``, from
    ``random_dice``) over the replicates that fine-tuned it (``+0.021 (n 6)``), or '' where none did."""
    diffs = [r["mean_dice"] - base[r["label_seed"], r["seed"]] for r in rows
             if r["kind"] == "finetune" and r["init"] == pre["task"] and r["arch"] == arch and r["fraction"] == fraction
             and r.get("budget", 1) == pre.get("budget", 1) and r.get("pretrain_seed") == pre.get("seed")
             and (r["label_seed"], r["seed"]) in base]
    return f"{sum(diffs) / len(diffs):+.3f} (n {len(diffs)})" if diffs else ""


def encoders_md(cfg: dict, rows: list[dict]) -> list[str]:
    """Per pretraining run: its pretext score, the k-NN probe before and after, and what its own encoder gave at
    the lowest fraction (the mean paired difference from random init over the replicates that fine-tuned it)."""
    pre = [r for r in rows if r["kind"] == "pretrain"]
    if not pre:
        return []
    low = min(cfg["fractions"])
    base = {arch: random_dice(rows, arch, low) for arch in cfg["archs"]}
    lines = ["", "## Encoders", "",
             "What each pretraining run learned, next to what its own encoder gave: the pretext score over the last "
             "epoch (accuracy; for restore the share of the corrupted input's error it removes), a k-NN probe "
             "(accuracy of a 20-nearest-neighbour vote on pooled encoder features for a slice task derived from "
             "labels: which of head / body / both / neither a slice shows; reference and query slices from disjoint "
             "subjects of the training pool), before (random encoder) and after pretraining, and the mean paired "
             f"difference from random init at {low * 100:g}% labels over the n replicates that fine-tuned this run "
             "(no CI: a few replicates; the task's CI over all its runs is in the tables above).", "",
             "| task | seed | steps | pretext score (chance) | k-NN probe: random -> pretrained | "
             + " | ".join(f"{a} {low * 100:g}%: this run - random" for a in cfg["archs"]) + " |",
             "|---|---|---|---|---|" + "---|" * len(cfg["archs"])]
    for r in pre:
        knn = (f"{r['knn_accuracy_start']:.3f} -> {r['knn_accuracy']:.3f}"
               if r.get("knn_accuracy") is not None and r.get("knn_accuracy_start") is not None else "-")
        transfer = [(run_transfer(rows, r, arch, low, base[arch]) or "-") if r.get("arch") in (None, arch) else ""
                    for arch in cfg["archs"]]
        task = init_name(r["task"], r.get("budget", 1)) + (f" ({r['arch']})" if r.get("arch") else "")
        lines.append(f"| {task} | {r.get('seed', '-')} | {r['steps']} | {r['final_accuracy']:.3f} ({r['chance']:.3f}) "
                     f"| {knn} | " + " | ".join(transfer) + " |")
    return lines


def provenance_md(cfg: dict, header: dict) -> list[str]:
    lines = ["", "Produced by:", "", f"    {header['command']}", "",
             f"config `{cfg['config_path']}`, commit `{header['commit']}`{' (dirty tree)' if header['dirty'] else ''}, "
             f"machine {header['machine']}, {header['finished_runs']} finished runs, total run wall time "
             f"{header['wall_time_min']:.1f} min. Per-run records: `runs.jsonl`; split: `splits.json`.", ""]
    if header.get("recomputed"):
        lines += ["Tables and plot recomputed from those records (no run re-run) by:", "", f"    {header['recomputed']}", ""]
    return lines


def table_md(cfg: dict, stats: dict, rows: list[dict], header: dict, budget: list[dict] | None = None) -> str:
    lines = intro(cfg, header)
    if budget:
        lines += budget_md(budget)
    lines += cells_md(cfg, stats)
    if any(k[1] != "random" for k in stats):
        lines += findings(cfg, stats)
    lines += encoders_md(cfg, rows)
    if not budget:
        lines += ["", "Reference: the source document's table (its dataset and protocol are not ours; shown for "
                  "comparison only):", "", "| init | 1% | 10% | 100% |", "|---|---|---|---|"]
        lines += [f"| {k} | " + " | ".join(f"{v:.2f}" for v in vals) + " |" for k, vals in REFERENCE.items()]
    return "\n".join(lines + provenance_md(cfg, header))


def budget_rows(cfg: dict, stats: dict, rows: list[dict], growth: dict) -> list[dict]:
    """One row per (task, budget) of a budget config at its fraction(s), with the pretraining steps it took, plus
    the random-init row (task random, 0 steps); ``growth`` maps (arch, task, fraction) to the 16x-vs-1x comparison."""
    steps = {}
    for r in rows:
        if r["kind"] == "pretrain":
            steps[(r["task"], r.get("budget", 1))] = r["steps"]
    out = []
    for arch in cfg["archs"]:
        for f in cfg["fractions"]:
            for init in inits(cfg):
                for budget in budgets_of(cfg, init):
                    s = stats.get((arch, init, budget, f))
                    if s:
                        out.append({"task": init, "pretrain_steps": 0 if init in BASE_INITS else steps.get((init, budget), ""),
                                    "budget": budget, "arch": arch, "fraction": f, "stats": s,
                                    "growth": growth.get((arch, init, f)) if budget == max(budgets_of(cfg, init)) else None})
    return out


def budget_csv(brows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(BUDGET_COLUMNS)
    for b in brows:
        s = b["stats"]
        w.writerow([b["task"], b["pretrain_steps"], b["budget"], b["arch"], b["fraction"], s["n"], s.get("paired", ""),
                    s["pretrain_seeds"] or "", _fmt(s["mean"]), _fmt(s.get("delta")), _fmt(s.get("low")),
                    _fmt(s.get("high")), s["collapsed"]])
    return buf.getvalue()


def budget_md(brows: list[dict]) -> list[str]:
    lines = ["## What more pretraining buys", "",
             "| task | pretraining steps | n | P | mean Dice | delta vs random (95% CI) | growth from the shortest (95% CI) |",
             "|---|---|---|---|---|---|---|"]
    for b in brows:
        s, g = b["stats"], b["growth"]
        delta = delta_text(s)
        lines.append(f"| {b['task']} ({b['arch']}, {b['fraction'] * 100:g}%) | {b['pretrain_steps']} | {s['n']} | "
                     f"{s['pretrain_seeds'] or '-'} | {s['mean']:.3f} | {f'**{delta}**' if excludes_zero(s) else delta or '-'} | "
                     + (f"{g['delta']:+.3f} ({g['low']:+.3f} to {g['high']:+.3f}, {g['n']} paired)" if g else "-") + " |")
    return lines + ["", "Growth: the mean over replicates of (delta at the longest pretraining - delta at the shortest), "
                    "each replicate's two encoders from the same pretraining seed; its CI from the same hierarchical "
                    "bootstrap.", ""]


def _plt():
    import matplotlib  # imported on use: only the collector plots
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def _errors(points, mid="mean", low="mean_low", high="mean_high"):
    return [[s[mid] - s[low] if s.get(low) is not None else 0 for s in points],
            [s[high] - s[mid] if s.get(high) is not None else 0 for s in points]]


def transfer_curve(cfg: dict, stats: dict, path: Path) -> None:
    """Top: mean test Dice per init with its 95% CI; bottom: the paired difference from random with its CI."""
    plt = _plt()
    archs = cfg["archs"]
    fig, axes = plt.subplots(2, len(archs), figsize=(5.5 * len(archs), 7.5), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    names = [(i, b) for i in inits(cfg) for b in budgets_of(cfg, i)]
    for col, arch in enumerate(archs):
        top, bottom = axes[0][col], axes[1][col]
        for k, (init, budget) in enumerate(names):
            offset = 1 + 0.06 * (k - (len(names) - 1) / 2)  # spread the markers so the bars do not overlap
            pts = [(f, stats[(arch, init, budget, f)]) for f in cfg["fractions"] if (arch, init, budget, f) in stats]
            if not pts:
                continue
            x = [100 * f * offset for f, _ in pts]
            line = top.errorbar(x, [s["mean"] for _, s in pts], yerr=_errors([s for _, s in pts]), marker="o", capsize=3,
                                label=init_name(init, budget))
            d = [(xx, s) for xx, (_, s) in zip(x, pts) if s.get("delta") is not None]
            if d:
                bottom.errorbar([xx for xx, _ in d], [s["delta"] for _, s in d], yerr=_errors([s for _, s in d], "delta",
                                                                                             "low", "high"),
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
    _save(fig, path)
    plt.close(fig)


def budget_curve(brows: list[dict], path: Path, title: str) -> None:
    """The gain over random init (95% CI) against the pretraining steps, one line per task."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for task in dict.fromkeys(b["task"] for b in brows if b["task"] not in BASE_INITS):
        pts = sorted((b for b in brows if b["task"] == task and b["stats"].get("delta") is not None),
                     key=lambda b: b["pretrain_steps"])
        if pts:
            ax.errorbar([b["pretrain_steps"] for b in pts], [b["stats"]["delta"] for b in pts],
                        yerr=_errors([b["stats"] for b in pts], "delta", "low", "high"), marker="o", capsize=3, label=task)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.set_xlabel("pretraining steps")
    ax.set_ylabel("test Dice minus random init (95% CI)")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
