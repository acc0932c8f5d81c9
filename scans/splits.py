"""Subject-level splits: a fixed test set, and nested label fractions of the training pool.

The split file is JSON with the case ids, written next to the results so anyone can rerun the
same split::

    {"dataset": ..., "test_fraction": 0.2, "split_seed": 0,
     "test": [ids], "train_pool": [ids], "groups": {case: subject}, "subjects": N,
     "label_fractions": {"<label seed>": {"0.01": [ids], "0.1": [ids], "1.0": [ids]}}}

The test set is whole subjects: subjects are drawn in a seeded order until the test set holds
``round(test_fraction * cases)`` volumes, so no subject has volumes on both sides. For one
label seed, the 1% cases are inside the 10% cases, which are inside 100% (a prefix of one
seeded permutation of the pool's volumes), and every fraction has at least one case.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import ScanError
from .protocol import subject_map


def check_fraction(f: float) -> float:
    f = float(f)
    if not (0.0 < f <= 1.0):
        raise ValueError(f"label fraction must be in (0, 1], got {f}")
    return f


def fraction_key(f: float) -> str:
    return repr(float(f))


def make_splits(case_ids: list[str], test_fraction: float = 0.2, seed: int = 0,
                fractions=(0.01, 0.1, 1.0), seeds=(0,), dataset: str = "", groups: dict | None = None) -> dict:
    """Build the split dictionary (see module docstring). Deterministic for the same inputs.

    ``groups`` maps case -> subject (a case not in it is its own subject); ``seeds`` are the
    label seeds, one nested set of fractions each.
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("case ids are not unique")
    if not (0.0 < test_fraction < 1.0):
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    fractions = sorted({check_fraction(f) for f in fractions})
    if not seeds:
        raise ValueError("need at least one seed")
    n_test = int(round(test_fraction * len(ids)))
    if n_test < 1 or n_test >= len(ids):
        raise ValueError(f"test fraction {test_fraction} of {len(ids)} cases leaves {n_test} test and "
                         f"{len(ids) - n_test} training cases; need at least one of each")
    subject_of = subject_map(ids, groups)
    subjects = sorted(set(subject_of.values()))
    members = {s: [c for c in ids if subject_of[c] == s] for s in subjects}
    test = []
    for i in np.random.default_rng(seed).permutation(len(subjects)):
        if len(test) >= n_test:
            break
        test += members[subjects[i]]
    if len(test) >= len(ids):
        raise ValueError(f"test fraction {test_fraction} of {len(subjects)} subjects leaves no training subject")
    test = sorted(test)
    pool = sorted(set(ids) - set(test))
    per_seed = {}
    for s in seeds:
        perm = [pool[i] for i in np.random.default_rng([int(seed), int(s)]).permutation(len(pool))]
        per_seed[str(int(s))] = {fraction_key(f): sorted(perm[: max(1, int(round(f * len(pool))))]) for f in fractions}
    return {"dataset": dataset, "num_cases": len(ids), "test_fraction": float(test_fraction), "split_seed": int(seed),
            "fractions": fractions, "seeds": [int(s) for s in seeds], "test": test, "train_pool": pool,
            "groups": subject_of, "subjects": len(subjects), "label_fractions": per_seed}


def load_splits(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ScanError(p, "split file does not exist (make one with: python -m scans split DATA_DIR --out FILE)")
    try:
        splits = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ScanError(p, f"invalid JSON: {e}") from None
    for k in ("test", "train_pool", "label_fractions"):
        if k not in splits:
            raise ScanError(p, f"not a split file: missing key {k!r}")
    splits["_path"] = str(p)
    return splits


def select_cases(splits: dict, fraction: float, seed: int) -> list[str]:
    """Case ids of the labelled training subset for ``fraction`` and ``seed``."""
    fraction = check_fraction(fraction)
    where = splits.get("_path")
    per_seed = splits["label_fractions"].get(str(int(seed)))
    if per_seed is None:
        raise ScanError(where, f"no label fractions for seed {seed}; the file has seeds {sorted(splits['label_fractions'])}")
    for key, ids in per_seed.items():
        if abs(float(key) - fraction) < 1e-9:
            if not ids:
                raise ScanError(where, f"label fraction {fraction} for seed {seed} selects no case")
            return list(ids)
    raise ScanError(where, f"no label fraction {fraction} for seed {seed}; the file has {sorted(per_seed, key=float)}")
