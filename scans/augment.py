"""Albumentations pipelines applied to image and mask together (images in [0, 1] float32)."""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402


FLIPS = {0: A.VerticalFlip, 1: A.HorizontalFlip}  # slice axis 0 (rows) / 1 (columns)


def segmentation_augment(level: str = "default", flip_axes=(), gamma: bool = True) -> A.Compose | None:
    """Label-safe flips, small rotation/scale, elastic and grid distortion, gamma, brightness/contrast.

    Settings stay within what keeps anatomy plausible. ``flip_axes`` are the 2D slice axes
    (0: rows, 1: columns) that may be flipped, each with probability 0.5; no other axis is ever
    mirrored (a flip along an axis whose direction defines a class would change what the label
    means: see scans.protocol). Gamma comes before anything that could make intensities negative
    (RandomGamma on negative values gives NaN).
    ``level``: ``none`` (no augmentation), ``light`` (flips + affine) or ``default``. ``gamma``:
    False for images not in [0, 1] (z-scored), where a gamma curve is undefined.
    """
    if level == "none":
        return None
    if level not in ("light", "default"):
        raise ValueError(f"augmentation level must be none, light or default, got {level!r}")
    if any(a not in FLIPS for a in flip_axes):
        raise ValueError(f"flip axes are slice axes 0 and 1, got {list(flip_axes)}")
    ops = [FLIPS[a](p=0.5) for a in sorted(set(flip_axes))] + [
        A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), translate_percent=(-0.05, 0.05),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.7),
    ]
    if level == "default":
        ops += [
            A.OneOf([
                A.ElasticTransform(alpha=8, sigma=4, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
                A.GridDistortion(num_steps=5, distort_limit=0.15, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
            ], p=0.3),
            *([A.RandomGamma(gamma_limit=(80, 125), p=0.5)] if gamma else []),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    return A.Compose(ops)
