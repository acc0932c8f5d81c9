"""Which cases a fine-tuning run sees, and the training slices with seeded augmentation.

Case selection: the labelled cases of the chosen label fraction and seed (``scans.select_cases``)
are the only training data; an optional validation set is held out of those cases; the split's
test cases are used for the final evaluation only.

Slice sampling (kept simple): one epoch lists every slice of the training volumes once and every
slice that holds foreground ``fg_repeat`` times in total, then ``engine.ResumableSampler``
shuffles that list per epoch. ``fg_repeat=1`` is uniform sampling.

Augmentation is applied to a sample with probability ``aug_prob`` (the rest are seen as they
are) and seeded per sample from ``(seed, epoch, position)``, so a run gives the same batches
whatever the number of DataLoader workers and after a resume.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

import scans
import engine


def read_class_names(data_dir) -> dict[str, str] | None:
    """``{"0": "background", "1": ...}`` from an MSD ``dataset.json``, or None without one."""
    p = Path(data_dir) / "dataset.json"
    if not p.is_file():
        return None
    try:
        labels = json.loads(p.read_text()).get("labels")
    except json.JSONDecodeError as e:
        raise scans.ScanError(p, f"invalid JSON: {e}") from None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None


def select(data_dir, split_file, fraction: float, label_seed: int, val_cases: int = 0, max_test_cases: int = 0):
    """Return ``(train, val, test)`` lists of ``scans.Case`` for one run.

    ``label_seed`` picks the fraction's labelled volumes from the split file.
    ``val_cases`` > 0 holds that many cases (a seeded draw) out of the fraction's cases for
    validation, when the fraction has at least 5 cases and keeps at least one for training;
    otherwise no validation. ``max_test_cases`` > 0 keeps the first N test cases (tests only).
    """
    splits = scans.load_splits(split_file)
    train_ids = scans.select_cases(splits, fraction, label_seed)
    test_ids = sorted(splits["test"])
    leak = sorted(set(train_ids) & set(test_ids))
    if leak:
        raise scans.ScanError(split_file, f"training cases of fraction {fraction} are also test cases: {leak[:5]}")
    by_id = {c.case_id: c for c in scans.find_cases(data_dir)}
    missing = sorted(set(train_ids + test_ids) - set(by_id))
    if missing:
        raise scans.ScanError(data_dir, f"{len(missing)} cases of {split_file} are not in the dataset (e.g. {missing[:3]})")
    for cid in train_ids + test_ids:
        if by_id[cid].label is None:
            raise scans.ScanError(by_id[cid].image, "case has no label file; fine-tuning and evaluation need labels")
    if val_cases < 0:
        raise ValueError(f"--val-cases must be >= 0, got {val_cases}")
    val_ids = []
    if val_cases and len(train_ids) >= 5 and len(train_ids) > val_cases:
        order = np.random.default_rng([int(label_seed), 7919]).permutation(sorted(train_ids))
        val_ids = sorted(order[:val_cases].tolist())
        train_ids = [c for c in train_ids if c not in set(val_ids)]
    if max_test_cases > 0:
        test_ids = test_ids[:max_test_cases]
    pick = lambda ids: [by_id[c] for c in sorted(ids)]  # noqa: E731
    return pick(train_ids), pick(val_ids), pick(test_ids)


def infer_num_classes(class_names: dict | None, loaded: list[scans.LoadedCase]) -> int:
    """Number of classes: from ``dataset.json`` labels, else the largest training label + 1 (at least 2)."""
    if class_names:
        return max(2, max(int(k) for k in class_names) + 1)
    return max(2, max(int(c.label.max()) for c in loaded) + 1)


class EpochPositions(torch.utils.data.Sampler):
    """Wraps ``engine.ResumableSampler`` to yield ``(epoch, position)`` keys for seeded augmentation."""

    def __init__(self, sampler: engine.ResumableSampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class TrainSlices(Dataset):
    """Training slices of labelled volumes. Item ``(epoch, position)`` ->
    (image float32 (1, H, W), mask int64 (H, W)), augmented with probability ``aug_prob``."""

    def __init__(self, loaded: list[scans.LoadedCase], size=(48, 64), axis: int = 2, transform=None,
                 fg_repeat: int = 1, seed: int = 0, min_len: int = 1, aug_prob: float = 1.0):
        if fg_repeat < 1:
            raise ValueError(f"--fg-repeat must be >= 1, got {fg_repeat}")
        if not 0 <= aug_prob <= 1:
            raise ValueError(f"--aug-prob must be in [0, 1], got {aug_prob}")
        self.slices = scans.LabelledSlices(loaded, size=size, axis=axis, transform=None)
        labels = self.slices.stack.labels
        fg = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
        table = np.concatenate([np.arange(len(labels))] + [fg] * (fg_repeat - 1))
        reps = -(-min_len // len(table))  # tiny data sets: repeat the list to fill one batch
        self.table = np.tile(table, reps)
        self.num_slices, self.num_foreground = len(labels), len(fg)
        self.transform, self.seed, self.aug_prob = transform, seed, aug_prob

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key):
        epoch, pos = key
        i = self.table[pos]
        img, mask = self.slices.stack.images[i], self.slices.stack.labels[i]
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, epoch, pos])
            if rng.random() < self.aug_prob:
                self.transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
                res = self.transform(image=img, mask=mask)
                img, mask = res["image"], res["mask"]
        return (torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None],
                torch.from_numpy(np.asarray(mask, dtype=np.int64)))
