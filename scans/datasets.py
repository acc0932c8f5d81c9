"""Torch datasets of 2D slices cut from normalised volumes.

All slices of all volumes are cut once, padded/cropped to ``size`` and stacked into one
contiguous array, so ``__getitem__`` is an index plus the augmentation: the data pipeline
stays far cheaper than a training step, and DataLoader workers share the arrays after fork.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .preprocess import centre_padding, pad_or_crop, pad_to_at_least
from .volumes import LoadedCase


def sample_rng(seed: int, epoch: int, index: int, *stream: int) -> np.random.Generator:
    """The generator of one sample's random draws: a function of (seed, epoch, sample index) only,
    whatever process, DataLoader worker or rank draws the sample (``stream`` separates independent
    draws of one sample). Pretraining views and fine-tuning augmentation draw from nothing else."""
    return np.random.default_rng([int(seed), int(epoch), int(index), *map(int, stream)])


class SliceStack:
    """Stacked 2D slices of many volumes.

    Attributes: ``images`` float32 (N, H, W); ``labels`` uint8 (N, H, W) or None;
    ``case_index`` (N,) index into ``case_ids``; ``boxes`` (N, 4) ``top, left, height, width``
    of the scanned content inside the padded slice (for crops that avoid the padding).
    """

    def __init__(self, cases: list[LoadedCase], size: tuple[int, int] = (48, 64), axis: int = 2,
                 with_labels: bool = False, pad_value: float = 0.0):
        if not cases:
            raise ValueError("no cases to slice")
        if axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
        self.size, self.axis = tuple(size), axis
        self.case_ids = [c.case_id for c in cases]
        images, labels, index, boxes = [], [], [], []
        th, tw = self.size
        for i, c in enumerate(cases):
            if with_labels and c.label is None:
                raise ValueError(f"case {c.case_id} has no label")
            vol = np.moveaxis(c.image, axis, 0)
            n, h, w = vol.shape
            images.append(np.moveaxis(pad_or_crop(np.moveaxis(vol, 0, -1), self.size, pad_value), -1, 0))
            if with_labels:
                lab = np.moveaxis(c.label, axis, 0)
                labels.append(np.moveaxis(pad_or_crop(np.moveaxis(lab, 0, -1), self.size, 0), -1, 0).astype(np.uint8))
            ch, cw = min(h, th), min(w, tw)
            boxes.append(np.tile([(th - ch) // 2, (tw - cw) // 2, ch, cw], (n, 1)))
            index.append(np.full(n, i))
        self.images = np.ascontiguousarray(np.concatenate(images), dtype=np.float32)
        self.labels = np.ascontiguousarray(np.concatenate(labels)) if with_labels else None
        self.case_index = np.concatenate(index)
        self.boxes = np.concatenate(boxes).astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)


class UnlabelledSlices(Dataset):
    """Slices for pretraining. Item ``(epoch, index)`` (an ``engine.ResumableSampler`` key) ->
    ``transform(image HxW float32, content box, rng)``, or a float32 tensor (1, H, W) without a transform;
    H, W = ``size``.

    ``rng`` is the sample's own generator, a function of ``(seed, epoch, index)`` only, and every
    random draw of the item comes from it: the number of DataLoader workers and the process that
    draws the item change nothing. A slice larger than ``size`` is kept whole, and each of its
    items is a random ``size`` window of it, so pretraining sees every part of large slices;
    smaller slices are centre-padded and draw no window.
    """

    def __init__(self, cases: list[LoadedCase], size=(48, 64), axis: int = 2, transform=None, seed: int = 0):
        self.stack = SliceStack(cases, size, axis, with_labels=False)
        self.transform, self.seed = transform, seed
        self.whole: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # stack index -> (padded slice, content box)
        th, tw = self.stack.size
        first = 0
        for c in cases:
            vol = np.moveaxis(c.image, axis, 0)
            n, h, w = vol.shape
            if h > th or w > tw:
                (top, _), (left, _) = centre_padding(h, w, self.stack.size)
                box = np.array([top, left, h, w])
                for j in range(n):
                    self.whole[first + j] = (pad_to_at_least(vol[j].astype(np.float32), self.stack.size), box)
            first += n

    def __len__(self) -> int:
        return len(self.stack)

    def window(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random ``size`` window of large slice ``i`` and the content box inside it."""
        img, (ct, cl, ch, cw) = self.whole[i]
        (h, w), (th, tw) = img.shape, self.stack.size
        top, left = int(rng.integers(h - th + 1)), int(rng.integers(w - tw + 1))
        t0, l0 = max(ct, top), max(cl, left)
        t1, l1 = min(ct + ch, top + th), min(cl + cw, left + tw)
        return img[top : top + th, left : left + tw], np.array([t0 - top, l0 - left, t1 - t0, l1 - l0])

    def __getitem__(self, key):
        epoch, i = key
        rng = sample_rng(self.seed, epoch, i)
        img, box = self.window(i, rng) if i in self.whole else (self.stack.images[i], self.stack.boxes[i])
        if self.transform is not None:
            return self.transform(img, box, rng)
        return torch.from_numpy(np.array(img, dtype=np.float32))[None]


class LabelledSlices(Dataset):
    """Slices with masks for fine-tuning. Item: (image float32 (1, H, W), mask int64 (H, W)).

    ``transform`` is an albumentations transform applied to image and mask together.
    """

    def __init__(self, cases: list[LoadedCase], size=(48, 64), axis: int = 2, transform=None):
        self.stack = SliceStack(cases, size, axis, with_labels=True)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.stack)

    def __getitem__(self, i: int):
        img, mask = self.stack.images[i], self.stack.labels[i]
        if self.transform is not None:
            out = self.transform(image=img, mask=mask)
            img, mask = out["image"], out["mask"]
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None], torch.from_numpy(np.asarray(mask, dtype=np.int64))
