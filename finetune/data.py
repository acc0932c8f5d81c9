"""Which cases a fine-tuning run sees, and the training slices with seeded augmentation.

Case selection: the labelled cases of the chosen label fraction and seed (``scans.select_cases``)
are the only training data; an optional validation set is held out of those cases; the split's
test cases are used for the final evaluation only.

Slice sampling (kept simple): one epoch lists every slice of the training volumes once and every
slice that holds foreground ``fg_repeat`` times in total, then ``engine.ResumableSampler``
shuffles that list per epoch. ``fg_repeat=1`` is uniform sampling. A slice larger than the
training size gives a random patch of it each time (a third of them on foreground).

Augmentation is applied to a sample with probability ``aug_prob`` (the rest are seen as they
are) and seeded per sample from ``(seed, epoch, position)`` (``scans.sample_rng``, the key that
``engine.ResumableSampler`` hands the dataset), so a run gives the same batches whatever the number
of DataLoader workers and after a resume.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

import scans


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


@dataclass
class Selection:
    """The cases (``scans.Case``) of one run: labelled ``train`` and held-out ``val`` cases of the
    fraction, ``watch`` cases of the training pool outside the fraction, and the ``test`` cases."""

    train: list
    val: list
    watch: list
    test: list


def select(data_dir, split_file, fraction: float, label_seed: int, val_cases: int = 0, max_test_cases: int = 0,
           watch_cases: int = 0) -> Selection:
    """The cases of one run, checked against the dataset.

    ``label_seed`` picks the fraction's labelled volumes from the split file.
    ``val_cases`` > 0 holds whole subjects (a seeded draw, by the split's ``groups``) out of the
    fraction's cases for validation, until at least that many cases are held out, when the
    fraction has at least 5 cases and keeps at least one subject for training; otherwise no
    validation (the labelled budget stays the fraction's: validation comes out of it, so such a
    run trains on fewer volumes than the fraction). ``watch_cases`` > 0: up to that many labelled
    cases of the training pool outside the fraction and its subjects (a seeded draw), for a
    validation curve to watch: never test cases, never used to choose anything.
    ``max_test_cases`` > 0 keeps the first N test cases (tests only).
    """
    splits = scans.load_splits(split_file)
    labelled = scans.select_cases(splits, fraction, label_seed)
    train_ids = list(labelled)
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
    groups = splits.get("groups") or {}
    cases_of = {}  # subject -> its labelled cases
    for c in labelled:
        cases_of.setdefault(groups.get(c, c), []).append(c)
    val_ids = []
    if val_cases and len(train_ids) >= 5 and len(train_ids) > val_cases:
        for sid in np.random.default_rng([int(label_seed), 7919]).permutation(sorted(cases_of)):
            if len(val_ids) >= val_cases:
                break
            val_ids += cases_of[sid]
        if len(val_ids) < len(train_ids):
            val_ids = sorted(val_ids)
            train_ids = [c for c in train_ids if c not in set(val_ids)]
        else:
            val_ids = []
    rest = sorted(c for c in set(splits["train_pool"]) - set(labelled) - set(test_ids) if groups.get(c, c) not in cases_of)
    watch_ids = np.random.default_rng([int(label_seed), 4241]).permutation(rest)[:watch_cases].tolist() if rest else []
    watch_ids = [c for c in watch_ids if c in by_id and by_id[c].label is not None]
    if max_test_cases > 0:
        test_ids = test_ids[:max_test_cases]
    pick = lambda ids: [by_id[c] for c in sorted(ids)]  # noqa: E731
    return Selection(pick(train_ids), pick(val_ids), pick(watch_ids), pick(test_ids))


def _labelled(cases: Selection) -> list:
    return cases.train + cases.val + cases.watch + cases.test


def infer_num_classes(class_names: dict | None, cases: Selection) -> int:
    """Number of classes: from ``dataset.json`` labels, else the largest label value of the training cases + 1
    (at least 2)."""
    if class_names:
        return max(2, max(int(k) for k in class_names) + 1)
    return max(2, max(max(scans.label_values(c.label), default=0) for c in cases.train) + 1)


def check_labels(cases: Selection, num_classes: int, class_names: dict | None) -> None:
    """Every label value of the run's cases is a class of the run (``dataset.json``'s labels, else 0 to
    ``num_classes - 1``); ScanError naming the file and the values otherwise. Reads the label files only."""
    allowed = {int(k) for k in class_names} if class_names else set(range(num_classes))
    allowed &= set(range(num_classes))
    names = f" ({', '.join(f'{k} {v}' for k, v in sorted(class_names.items(), key=lambda kv: int(kv[0])))})" if class_names else ""
    for c in _labelled(cases):
        bad = sorted(scans.label_values(c.label) - allowed)
        if bad:
            hint = "" if class_names else " (the largest training label + 1; give --num-classes for more)"
            raise scans.ScanError(c.label, f"label values {bad[:5]} are not classes of this run: expected "
                                           f"{sorted(allowed)}{names or hint}")


def resample_case(c: scans.LoadedCase, axis: int, target) -> scans.LoadedCase:
    """``c`` with its in-plane axes (all but ``axis``) resampled to ``target`` mm: image linear, label nearest."""
    return scans.LoadedCase(c.case_id, scans.resample_inplane(c.image, c.spacing, target, axis, 1).astype(np.float32),
                            scans.resample_inplane(c.label, c.spacing, target, axis, 0),
                            scans.with_inplane_spacing(c.spacing, target, axis))


class TrainSlices(Dataset):
    """Training patches of labelled volumes. Item ``(epoch, position)`` -> (image float32 (1, H, W),
    mask int64 (H, W)) with (H, W) = ``size``, augmented with probability ``aug_prob``.

    Every slice is kept whole (centre-padded where smaller than ``size``). A slice larger than
    ``size`` gives a random ``size`` patch each time it is drawn: with probability ``fg_patch``
    centred on a random foreground pixel (nnU-Net forces a third of its patches onto foreground),
    else on any pixel (clamped inside the slice), so edges and corners are drawn too. A slice no larger than ``size`` is
    used whole: no draw, exactly the padded slice.
    """

    def __init__(self, loaded: list[scans.LoadedCase], size=(48, 64), axis: int = 2, transform=None,
                 fg_repeat: int = 1, seed: int = 0, min_len: int = 1, aug_prob: float = 1.0, fg_patch: float = 1 / 3):
        if fg_repeat < 1:
            raise ValueError(f"--fg-repeat must be >= 1, got {fg_repeat}")
        if not 0 <= aug_prob <= 1:
            raise ValueError(f"--aug-prob must be in [0, 1], got {aug_prob}")
        if not 0 <= fg_patch <= 1:
            raise ValueError(f"--fg-patch must be in [0, 1], got {fg_patch}")
        if not loaded:
            raise ValueError("no cases to slice")
        self.size = tuple(size)
        self.images, self.labels = [], []
        for c in loaded:
            img = scans.pad_to_at_least(np.moveaxis(c.image, axis, 0).astype(np.float32, copy=False), self.size)
            lab = scans.pad_to_at_least(np.moveaxis(c.label, axis, 0).astype(np.uint8), self.size)
            self.images += list(img)
            self.labels += list(lab)
        fg = np.flatnonzero([lab.any() for lab in self.labels])
        table = np.concatenate([np.arange(len(self.labels))] + [fg] * (fg_repeat - 1))
        reps = -(-min_len // len(table))  # tiny data sets: repeat the list to fill one batch
        self.table = np.tile(table, reps)
        self.num_slices, self.num_foreground = len(self.labels), len(fg)
        self.num_larger = sum(i.shape != self.size for i in self.images)
        self.transform, self.seed, self.aug_prob, self.fg_patch = transform, seed, aug_prob, fg_patch

    def __len__(self) -> int:
        return len(self.table)

    def patch(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A ``size`` patch of slice ``i`` (the whole slice when it is no larger)."""
        img, mask = self.images[i], self.labels[i]
        (h, w), (th, tw) = img.shape, self.size
        if (h, w) == (th, tw):
            return img, mask
        if rng.random() < self.fg_patch and mask.any():  # centred on a foreground pixel
            ys, xs = np.nonzero(mask)
            k = rng.integers(len(ys))
            cy, cx = ys[k], xs[k]
        else:  # centred on any pixel: clamping at the borders covers edges and corners too
            cy, cx = rng.integers(h), rng.integers(w)
        top, left = int(np.clip(cy - th // 2, 0, h - th)), int(np.clip(cx - tw // 2, 0, w - tw))
        return img[top : top + th, left : left + tw], mask[top : top + th, left : left + tw]

    def __getitem__(self, key):
        epoch, pos = key
        i = self.table[pos]
        img, mask = self.images[i], self.labels[i]
        if img.shape != self.size:  # a random patch; slices no larger than --size need no draw
            img, mask = self.patch(i, scans.sample_rng(self.seed, epoch, pos, 1))
        if self.transform is not None:
            rng = scans.sample_rng(self.seed, epoch, pos)
            if rng.random() < self.aug_prob:
                self.transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
                res = self.transform(image=img, mask=mask)
                img, mask = res["image"], res["mask"]
        return (torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None],
                torch.from_numpy(np.asarray(mask, dtype=np.int64)))
