"""Per-volume intensity normalisation, 2D slicing and pad/crop to a fixed size."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np

from .io import apply_window

NORM_MODES = ("zscore", "minmax", "window", "none")
NORM_PRESETS = ("percentile", "zscore", "ct")


@dataclass(frozen=True)
class Normalization:
    """How to normalise one volume on its own.

    ``window=(centre, width)`` clips first (CT in Hounsfield units), then intensities are
    clipped to the ``clip`` percentiles of the volume, then scaled: ``minmax`` to [0, 1],
    ``zscore`` to zero mean and unit variance, ``window`` the window's range to [0, 1] (the same
    scale for every volume), ``none`` left as is.
    """

    mode: str = "minmax"
    clip: tuple[float, float] | None = (0.5, 99.5)
    window: tuple[float, float] | None = None

    def __post_init__(self):
        if self.mode not in NORM_MODES:
            raise ValueError(f"normalisation mode must be one of {NORM_MODES}, got {self.mode!r}")
        if self.clip is not None and not (0 <= self.clip[0] < self.clip[1] <= 100):
            raise ValueError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {self.clip}")
        if self.window is not None and self.window[1] <= 0:
            raise ValueError(f"window width must be > 0, got {self.window[1]}")
        if self.mode == "window" and self.window is None:
            raise ValueError("normalisation mode 'window' needs window=(level, width)")

    def to_dict(self) -> dict:
        return asdict(self)


def replace_nonfinite(arr: np.ndarray, where) -> np.ndarray:
    """``arr`` with its NaN / inf voxels replaced by its lowest finite value (0 when none is finite),
    with a warning on stderr naming ``where`` and how many voxels. A percentile clip of a volume
    holding one NaN is NaN everywhere, so this runs before :func:`normalize`."""
    if arr.dtype.kind not in "fc":
        return arr
    finite = np.isfinite(arr)
    if finite.all():
        return arr
    n = arr.size - int(finite.sum())
    fill = float(arr[finite].min()) if finite.any() else 0.0
    print(f"warning: {where}: {n} voxels ({n / arr.size:.1%}) are not finite (NaN or inf); replaced by the scan's "
          f"lowest finite value ({fill:g}) before normalisation", file=sys.stderr, flush=True)
    return np.where(finite, arr, np.asarray(fill, dtype=arr.dtype))


def normalize(arr: np.ndarray, norm: Normalization = Normalization()) -> np.ndarray:
    """Return a float32 copy of ``arr`` normalised per ``norm`` (non-finite voxels: see :func:`replace_nonfinite`)."""
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
    elif norm.mode == "window":
        x -= norm.window[0] - norm.window[1] / 2.0
        x /= norm.window[1]
    return x


def add_normalization_args(parser) -> None:
    """``--norm``, ``--window``: how every scan of a run is normalised (a setting of pretrain, finetune
    and, through the run's model.pt, of predict)."""
    g = parser.add_argument_group("intensity normalisation (per volume)")
    g.add_argument("--norm", choices=NORM_PRESETS, default="percentile",
                   help="percentile: clip to the 0.5-99.5th percentiles, scale to [0, 1] (MRI); zscore: clip the "
                        "same, then zero mean and unit variance; ct: clip to --window, scale it to [0, 1] (CT, HU)")
    g.add_argument("--window", type=float, nargs=2, default=None, metavar=("LEVEL", "WIDTH"),
                   help="CT window in Hounsfield units for --norm ct, e.g. 40 400 (soft tissue)")


def normalization_of(args) -> Normalization:
    """The ``Normalization`` of ``--norm`` / ``--window`` (ValueError for a window without ct or ct without one)."""
    if args.norm == "ct":
        if not args.window:
            raise ValueError("--norm ct needs --window LEVEL WIDTH (for example 40 400)")
        return Normalization("window", None, tuple(args.window))
    if args.window:
        raise ValueError(f"--window is used with --norm ct only (got --norm {args.norm})")
    return Normalization("zscore" if args.norm == "zscore" else "minmax", (0.5, 99.5), None)


def in_plane_axes(axis: int) -> list[int]:
    """The two volume axes of a slice cut along ``axis``, in order (slice rows, slice columns)."""
    return [a for a in (0, 1, 2) if a != axis]


def slice_flips(volume_axes, axis: int) -> tuple[int, ...]:
    """Volume flip axes as axes (0, 1) of the 2D slices cut along ``axis`` (the slice axis itself drops out)."""
    in_plane = in_plane_axes(axis)
    return tuple(in_plane.index(a) for a in volume_axes if a in in_plane)


def with_inplane_spacing(spacing, target, axis: int) -> tuple[float, float, float]:
    """``spacing`` (mm, 3 values) with the two axes other than ``axis`` set to ``target`` (mm, in axis order)."""
    out = [float(s) for s in spacing]
    for a, t in zip(in_plane_axes(axis), target):
        out[a] = float(t)
    return tuple(out)


def resample_inplane(arr: np.ndarray, spacing, target, axis: int, order: int) -> np.ndarray:
    """Resample the two axes other than ``axis`` from ``spacing`` (mm, 3 values) to ``target`` (mm,
    2 values, in axis order); ``order`` 1 (linear) for images, 0 (nearest) for labels."""
    from scipy import ndimage

    factors = [float(s) / t for s, t in zip(spacing, with_inplane_spacing(spacing, target, axis))]
    if all(abs(f - 1) < 1e-6 for f in factors):
        return arr
    return ndimage.zoom(arr, factors, order=order, mode="nearest", grid_mode=True)


def resample_to_shape(arr: np.ndarray, shape, order: int = 1) -> np.ndarray:
    """Resample the last three axes of ``arr`` back to ``shape`` (a prediction to its scan's grid)."""
    from scipy import ndimage

    if tuple(arr.shape[-3:]) == tuple(shape):
        return arr
    factors = [1.0] * (arr.ndim - 3) + [s / n for s, n in zip(shape, arr.shape[-3:])]
    out = ndimage.zoom(arr, factors, order=order, mode="nearest", grid_mode=True)
    assert out.shape[-3:] == tuple(shape), (out.shape, shape)
    return out


def centre_padding(h: int, w: int, size) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(top, bottom), (left, right)`` padding that centres an ``h`` x ``w`` slice in at least ``size``."""
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    return (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)


def pad_to_at_least(arr: np.ndarray, size, value: float = 0.0) -> np.ndarray:
    """Centre-pad the last two axes of ``arr`` to at least ``size`` (as ``pad_or_crop`` pads);
    larger axes keep their length."""
    (top, bottom), (left, right) = centre_padding(*arr.shape[-2:], size)
    if not (top or bottom or left or right):
        return arr
    return np.pad(arr, [(0, 0)] * (arr.ndim - 2) + [(top, bottom), (left, right)], constant_values=value)


def pad_or_crop(img: np.ndarray, size: tuple[int, int], value: float = 0.0) -> np.ndarray:
    """Centre-pad (with ``value``) or centre-crop the first two axes of ``img`` to ``size``."""
    h, w = img.shape[:2]
    th, tw = size
    out = img
    if h > th or w > tw:
        top, left = max(0, (h - th) // 2), max(0, (w - tw) // 2)
        out = out[top : top + min(h, th), left : left + min(w, tw)]
    (top, bottom), (left, right) = centre_padding(*out.shape[:2], size)
    if top or bottom or left or right:
        out = np.pad(out, [(top, bottom), (left, right)] + [(0, 0)] * (out.ndim - 2), constant_values=value)
    return out


def slice_volume(arr: np.ndarray, axis: int = 2) -> list[np.ndarray]:
    """Split a 3D array into 2D slices along ``axis``."""
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
    return [np.take(arr, i, axis=axis) for i in range(arr.shape[axis])]
