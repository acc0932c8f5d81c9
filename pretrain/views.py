"""Shared pieces of view making: cut the scanned content out of a padded slice, resize."""
from __future__ import annotations

import cv2
import numpy as np
import torch


def content(img: np.ndarray, box) -> np.ndarray:
    """The scanned region of a padded slice: ``img[top:top+h, left:left+w]`` (no padding left)."""
    top, left, h, w = (int(v) for v in box)
    return img[top : top + h, left : left + w]


def random_square(img: np.ndarray, rng: np.random.Generator, min_side: float = 1.0, max_side: float = 1.0) -> np.ndarray:
    """A random square crop inside ``img``; its side is drawn from [min_side, max_side] x the shorter edge."""
    h, w = img.shape
    s = min(h, w)
    lo, hi = max(1, int(round(min_side * s))), max(1, int(round(max_side * s)))
    s = int(rng.integers(lo, hi + 1)) if lo < hi else hi
    top, left = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
    return img[top : top + s, left : left + s]


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 HxW image to ``size`` = (H, W)."""
    if img.shape == tuple(size):
        return np.ascontiguousarray(img, dtype=np.float32)
    return cv2.resize(np.ascontiguousarray(img, dtype=np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of rows of ``logits`` (N, C) whose argmax is ``target`` (N,): a 0-d float tensor, left on the
    device so the training loop can average it without a host sync each step."""
    return (logits.argmax(1) == target).float().mean()
