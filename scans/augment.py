"""Albumentations pipelines applied to image and mask together (images in [0, 1] float32)."""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402


def segmentation_augment(level: str = "default") -> A.Compose | None:
    """Flips, small rotation/scale, elastic and grid distortion, gamma, brightness/contrast.

    Settings stay within what keeps anatomy plausible. Gamma comes before anything that
    could make intensities negative (RandomGamma on negative values gives NaN).
    ``level``: ``none`` (no augmentation), ``light`` (flip + affine) or ``default``.
    """
    if level == "none":
        return None
    if level not in ("light", "default"):
        raise ValueError(f"augmentation level must be none, light or default, got {level!r}")
    ops = [
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), translate_percent=(-0.05, 0.05),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.7),
    ]
    if level == "default":
        ops += [
            A.OneOf([
                A.ElasticTransform(alpha=8, sigma=4, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
                A.GridDistortion(num_steps=5, distort_limit=0.15, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
            ], p=0.3),
            A.RandomGamma(gamma_limit=(80, 125), p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    return A.Compose(ops)
