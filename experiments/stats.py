"""The statistics of a transfer table: per cell n, mean, sd, collapses, and the paired difference from
random init with a 95% CI from a hierarchical bootstrap.

A replicate is a (label seed, training seed) pair; within a replicate every init sees the same
labelled volumes, decoder initialisation, data order and augmentation, so the difference of two
inits' test Dice is a paired measurement. A pretrained init adds one more source of variation
above them: which pretraining run its encoder came from (its pretraining seed; another CPU model
is another draw of it). Replicates are spread over the pretraining seeds by label seed, so the
sources are nested: pretraining seed > label seed > training seed, and the test subjects (one
draw per iteration, shared by all replicates, as the test set is). The bootstrap resamples each
level with replacement, in that order (Davison & Hinkley 1997, ch. 3.8; Ren et al. 2010
"Nonparametric bootstrapping for hierarchical data"); a random-init cell has no pretraining level.
The statistic on a resample is the mean over its replicates of the case-weighted mean over its
subjects, so on the original data it equals the plain mean over replicates and test cases.
"""
from __future__ import annotations

import statistics

import numpy as np

COLLAPSE = 0.05  # a run has collapsed when a foreground class scores a mean test Dice below this


def subject_sums(cases: list[dict], subject_of: dict[str, str], subjects: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per subject: the sum of the per-case mean Dice and the number of cases ((T,), (T,))."""
    index = {s: i for i, s in enumerate(subjects)}
    sums, counts = np.zeros(len(subjects)), np.zeros(len(subjects))
    for c in cases:
        i = index[subject_of.get(c["case_id"], c["case_id"])]
        sums[i] += c["mean_dice"]
        counts[i] += 1
    return sums, counts


def _tree(keys: list[tuple]) -> list[dict]:
    """Level by level: ``nodes`` (the key prefixes at that depth, sorted) and ``children`` (for each node of the
    level above, the indices of its children at this level; the top level has the one root's)."""
    levels = []
    parents = [()]
    for depth in range(len(keys[0])):
        nodes = sorted({k[:depth + 1] for k in keys})
        index = {n: i for i, n in enumerate(nodes)}
        children = [[index[n] for n in nodes if n[:depth] == p] for p in parents]
        levels.append({"nodes": nodes, "children": children})
        parents = nodes
    return levels


def hierarchical_bootstrap(sums: dict[tuple, np.ndarray], counts: np.ndarray, n_boot: int = 4000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of the mean of a per-subject quantity over replicates and subjects.

    ``sums[key]``: per-subject sums (T,) of the per-case quantity (e.g. a paired Dice difference) of
    one replicate, its key the nested levels that produced it (``(label seed, training seed)``, or
    ``(pretraining seed, label seed, training seed)``); ``counts`` (T,): test cases per subject.
    Each level is resampled with replacement within the draws of the level above, then the subjects.
    Returns the estimate on the data and the percentile interval at ``level``.
    """
    keys = sorted(sums)
    estimate = float(np.mean([sums[k].sum() / counts.sum() for k in keys]))
    rng = np.random.default_rng(seed)
    t = len(counts)
    subj = rng.integers(0, t, size=(n_boot, t))                   # subjects, one resample per iteration
    den = counts[subj].sum(1)                                      # (B,) test cases drawn
    leaf_num = np.stack([sums[k][subj].sum(1) for k in keys])     # (leaves, B): each replicate on the drawn subjects
    levels = _tree(keys)
    # draw level by level; ``sel`` holds node indices (B, d1, d2, ...), ``valid`` which of the padded slots count
    first = levels[0]["children"][0]
    sel = np.asarray(first)[rng.integers(0, len(first), size=(n_boot, len(first)))]
    valid = np.ones(sel.shape, bool)
    for lvl in levels[1:]:
        kids = lvl["children"]
        width = max(map(len, kids))
        table = np.array([k + [k[0]] * (width - len(k)) for k in kids])  # padded with a valid child
        n_kids = np.array([len(k) for k in kids])[sel]                       # (B, ...) children of each drawn node
        draw = np.floor(rng.random(sel.shape + (width,)) * n_kids[..., None]).astype(int)
        valid = valid[..., None] & (np.arange(width) < n_kids[..., None])
        sel = table[sel[..., None], draw]
    leaf_of = {n: i for i, n in enumerate(keys)}
    leaves = np.array([leaf_of[n] for n in levels[-1]["nodes"]])[sel]    # (B, ...) replicate indices
    picked = leaf_num[leaves, np.arange(n_boot).reshape((n_boot,) + (1,) * (leaves.ndim - 1))]
    axes = tuple(range(1, leaves.ndim))
    stats = (picked * valid).sum(axes) / valid.sum(axes) / den
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return estimate, float(low), float(high)


def check_same_cases(runs) -> None:
    """Runs compared with each other must have been scored on the same test cases (ValueError naming one that was not)."""
    sets = [(r["out"], frozenset(c["case_id"] for c in r["cases"])) for r in runs]
    for out, cases in sets[1:]:
        if cases != sets[0][1]:
            raise ValueError(f"{out} was scored on {len(cases)} test cases and {sets[0][0]} on {len(sets[0][1])} "
                             f"({len(cases ^ sets[0][1])} differ): runs on other test cases cannot be compared")


def replicate_key(run: dict) -> tuple:
    """A run's place in the nested design: (pretraining seed, label seed, training seed), or (label seed, training
    seed) for an init without pretraining."""
    rep = (run["label_seed"], run["seed"])
    return rep if run.get("pretrain_seed") is None else (run["pretrain_seed"], *rep)


def _paired(reps: dict, ref: dict) -> list[tuple]:
    """Keys of ``reps`` whose (label seed, training seed) replicate random init has too."""
    return [k for k in sorted(reps) if k[-2:] in ref]


def cell(runs: dict[tuple, dict], ref: dict[tuple, dict], subject_of: dict[str, str], n_boot: int = 4000) -> dict:
    """The statistics of one cell: ``runs`` and the random-init ``ref`` runs of the same cell, each keyed by
    :func:`replicate_key`. n, mean, sd, collapsed, the mean's CI, and (when ``ref`` has partners) the paired
    difference ``delta`` with its CI ``low``/``high``, how many pairs, label seeds and pretraining seeds it rests on.

    CIs need two replicates: with one, a bootstrap would vary the test subjects only, not the training runs, so
    they stay None."""
    paired = _paired(runs, ref)
    check_same_cases(list(runs.values()) + [ref[k[-2:]] for k in paired])
    test = sorted({c["case_id"] for r in runs.values() for c in r["cases"]})
    subjects = sorted({subject_of.get(c, c) for c in test})
    dice = [r["mean_dice"] for r in runs.values()]
    st = {"n": len(runs), "mean": statistics.fmean(dice), "sd": statistics.stdev(dice) if len(dice) > 1 else None,
          "collapsed": sum(r["collapsed"] for r in runs.values()), "replicates": sorted(runs),
          "test_subjects": len(subjects), "mean_low": None, "mean_high": None,
          "pretrain_seeds": len({k[0] for k in runs}) if len(next(iter(runs))) == 3 else 0}
    sums = {k: subject_sums(r["cases"], subject_of, subjects) for k, r in runs.items()}
    counts = next(iter(sums.values()))[1]
    if len(runs) > 1:
        _, st["mean_low"], st["mean_high"] = hierarchical_bootstrap({k: s for k, (s, _) in sums.items()}, counts, n_boot)
    if paired and runs is not ref:
        diffs = {k: paired_sums(runs[k], ref[k[-2:]], subject_of, subjects) for k in paired}
        st["paired"], st["paired_label_seeds"] = len(paired), len({k[-2] for k in paired})
        st["delta"], low, high = hierarchical_bootstrap(diffs, counts, n_boot)
        st["low"], st["high"] = (low, high) if len(paired) > 1 else (None, None)
    return st


def paired_sums(run: dict, ref: dict, subject_of: dict[str, str], subjects: list[str]) -> np.ndarray:
    """Per subject: the summed per-case difference ``run - ref`` of two runs scored on the same cases."""
    by_case = {c["case_id"]: c["mean_dice"] for c in ref["cases"]}
    cases = [{"case_id": c["case_id"], "mean_dice": c["mean_dice"] - by_case[c["case_id"]]} for c in run["cases"]]
    return subject_sums(cases, subject_of, subjects)[0]


def by_replicate(rows: list[dict], **cell_of) -> dict[tuple, dict]:
    """The fine-tuning records of one cell (``arch``, ``init``, ``budget``, ``fraction``), keyed by replicate."""
    return {replicate_key(r): r for r in rows
            if r["kind"] == "finetune" and all(r.get(k, 1 if k == "budget" else None) == v for k, v in cell_of.items())}


def cell_stats(cfg: dict, rows: list[dict], subject_of: dict[str, str], n_boot: int = 4000) -> dict:
    """(arch, init, budget, fraction) -> :func:`cell` for every cell of ``cfg`` that has finished runs."""
    out = {}
    for arch in cfg["archs"]:
        for f in cfg["fractions"]:
            ref = by_replicate(rows, arch=arch, init="random", fraction=f)
            for init in cfg["inits"]:
                for budget in ([1] if init in ("random", "imagenet") else cfg["pretrain"]["budgets"]):
                    runs = by_replicate(rows, arch=arch, init=init, budget=budget, fraction=f)
                    if runs:
                        out[(arch, init, budget, f)] = cell(runs, ref if init != "random" else runs, subject_of, n_boot)
    return out


def budget_growth(rows: list[dict], subject_of: dict[str, str], arch: str, init: str, fraction: float, low: int,
                  high: int, n_boot: int = 4000) -> dict | None:
    """How much more the ``high`` pretraining budget gains over random than the ``low`` one: the mean over the
    replicates both have of (delta at ``high`` - delta at ``low``), with its CI; each replicate's two encoders
    share its pretraining seed, label seed and training seed. None without two such replicates."""
    a = by_replicate(rows, arch=arch, init=init, budget=high, fraction=fraction)
    b = by_replicate(rows, arch=arch, init=init, budget=low, fraction=fraction)
    both = sorted(set(a) & set(b))
    if len(both) < 2:
        return None
    check_same_cases([a[k] for k in both] + [b[k] for k in both])
    subjects = sorted({subject_of.get(c["case_id"], c["case_id"]) for c in a[both[0]]["cases"]})
    counts = subject_sums(a[both[0]]["cases"], subject_of, subjects)[1]
    diffs = {k: paired_sums(a[k], b[k], subject_of, subjects) for k in both}
    est, lo, hi = hierarchical_bootstrap(diffs, counts, n_boot)
    return {"delta": est, "low": lo, "high": hi, "n": len(both)}
