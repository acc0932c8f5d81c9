"""Paired comparisons of inits with a hierarchical bootstrap (label seeds, training seeds, test subjects).

A replicate is a (label seed, training seed) pair; within a replicate, every init sees the same
labelled volumes, decoder initialisation, data order and augmentation, so the difference of two
inits' test Dice is a paired measurement. Its uncertainty has three sources, nested: which
volumes were labelled (label seed), how training went (training seed), and which subjects make
up the test set. The bootstrap resamples each level with replacement, in that order
(Davison & Hinkley 1997, ch. 3.8; Ren et al. 2010 "Nonparametric bootstrapping for hierarchical
data"): label seeds; for each drawn label seed, its training seeds; and the test subjects (one
draw per iteration, shared by all replicates, as the test set is). The statistic on a resample
is the mean over its replicates of the case-weighted mean over its subjects, so on the original
data it equals the plain mean over replicates and test cases.
"""
from __future__ import annotations

import numpy as np


def subject_sums(cases: list[dict], subject_of: dict[str, str], subjects: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per subject: the sum of the per-case mean Dice and the number of cases ((T,), (T,))."""
    index = {s: i for i, s in enumerate(subjects)}
    sums, counts = np.zeros(len(subjects)), np.zeros(len(subjects))
    for c in cases:
        i = index[subject_of.get(c["case_id"], c["case_id"])]
        sums[i] += c["mean_dice"]
        counts[i] += 1
    return sums, counts


def hierarchical_bootstrap(sums: dict[tuple[int, int], np.ndarray], counts: np.ndarray, n_boot: int = 4000,
                           seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of the mean of a per-subject quantity over replicates and subjects.

    ``sums[(label_seed, train_seed)]``: per-subject sums (T,) of the per-case quantity (e.g. a
    paired Dice difference); ``counts`` (T,): test cases per subject. Returns the estimate on the
    data and the percentile interval at ``level``. With one replicate, only subjects vary.
    """
    reps = sorted(sums)
    label_seeds = sorted({l for l, _ in reps})
    train_of = [[s for ll, s in reps if ll == l] for l in label_seeds]
    estimate = float(np.mean([sums[r].sum() / counts.sum() for r in reps]))
    rng = np.random.default_rng(seed)
    n_l, max_s, t = len(label_seeds), max(map(len, train_of)), len(counts)
    subj = rng.integers(0, t, size=(n_boot, t))                   # subjects, one resample per iteration
    den = counts[subj].sum(1)                                      # (B,) test cases drawn
    num = np.zeros((n_l, max_s, n_boot))                           # per replicate: summed quantity over them
    for i, l in enumerate(label_seeds):
        for j, s in enumerate(train_of[i]):
            num[i, j] = sums[(l, s)][subj].sum(1)
    lens = np.array([len(x) for x in train_of])
    li = rng.integers(0, n_l, size=(n_boot, n_l))                 # label seeds, with replacement
    m = lens[li]                                                   # (B, n_l) training seeds under each
    sj = np.floor(rng.random((n_boot, n_l, max_s)) * m[..., None]).astype(int)
    valid = np.arange(max_s) < m[..., None]                        # draw m_l training seeds for label seed l
    picked = num[li[..., None], np.minimum(sj, max_s - 1), np.arange(n_boot)[:, None, None]]
    stats = (picked * valid).sum((1, 2)) / valid.sum((1, 2)) / den
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return estimate, float(low), float(high)
