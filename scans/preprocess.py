"""Per-volume intensity normalisation, 2D slicing and pad/crop to a fixed size."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .io import apply_window

NORM_MODES = ("zscore", "minmax", "none")


@dataclass(frozen=True)
class Normalization:
    """How to normalise one volume on its own.

    ``window=(centre, width)`` clips first (CT in Hounsfield units), then intensities are
    clipped to the ``clip`` percentiles of the volume, then scaled: ``minmax`` to [0, 1],
    ``zscore`` to zero mean and unit variance, ``none`` left as is.
    """

    mode: str = "minmax"
    clip: tuple[float, float] | None = (0.5, 99.5)
    window: tuple[float, float] | None = None

    def __post_init__(self):
        if self.mode not in NORM_MODES:
            raise ValueError(f"normalisation mode must be one of {NORM_MODES}, got {self.mode!r}")
        if self.clip is not None and not (0 <= self.clip[0] < self.clip[1] <= 100):
            raise ValueError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {self.clip}")

    def to_dict(self) -> dict:
        return asdict(self)


def normalize(arr: np.ndarray, norm: Normalization = Normalization()) -> np.ndarray:
    """Return a float32 copy of ``arr`` normalised per ``norm``."""
    x = arr.astype(np.float32, copy=True)
    if norm.window is not None:
        x = apply_window(x, *norm.window)
    if norm.clip is not None:
        lo, hi = np.percentile(x, norm.clip)
        np.clip(x, lo, hi, out=x)
    if norm.mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
        x -= lo
        if hi > lo:
            x /= hi - lo
    elif norm.mode == "zscore":
        x -= float(x.mean())
        std = float(x.std())
        if std > 0:
            x /= std
    return x


def pad_or_crop(img: np.ndarray, size: tuple[int, int], value: float = 0.0) -> np.ndarray:
    """Centre-pad (with ``value``) or centre-crop the first two axes of ``img`` to ``size``."""
    h, w = img.shape[:2]
    th, tw = size
    out = img
    if h > th or w > tw:
        top, left = max(0, (h - th) // 2), max(0, (w - tw) // 2)
        out = out[top : top + min(h, th), left : left + min(w, tw)]
    h, w = out.shape[:2]
    if h < th or w < tw:
        top, left = (th - h) // 2, (tw - w) // 2
        pad = [(top, th - h - top), (left, tw - w - left)] + [(0, 0)] * (out.ndim - 2)
        out = np.pad(out, pad, mode="constant", constant_values=value)
    return out


def slice_volume(arr: np.ndarray, axis: int = 2) -> list[np.ndarray]:
    """Split a 3D array into 2D slices along ``axis``."""
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
    return [np.take(arr, i, axis=axis) for i in range(arr.shape[axis])]
