"""Decode, check and normalise cases once; later epochs read them from an in-memory cache."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .discover import Case
from .errors import ScanError
from .io import read_volume
from .preprocess import Normalization, normalize, replace_nonfinite

_CACHE: dict[tuple, "LoadedCase"] = {}


@dataclass
class LoadedCase:
    """A decoded case: ``image`` float32 (X, Y, Z) normalised; ``label`` int64 (X, Y, Z) or None."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...]


def check_label(arr: np.ndarray, path: str) -> np.ndarray:
    """Labels must hold non-negative integers (float files holding integers are accepted)."""
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            bad = arr[~np.isclose(arr, np.round(arr))][:3] if np.isfinite(arr).all() else "NaN/inf"
            raise ScanError(path, f"label values are not integers (e.g. {bad})")
    elif arr.dtype.kind not in "iub":
        raise ScanError(path, f"label dtype {arr.dtype} is not numeric")
    out = arr.astype(np.int64)
    if out.min() < 0:
        raise ScanError(path, f"label values must be >= 0, found {int(out.min())}")
    return out


_LABEL_VALUES: dict[tuple, frozenset] = {}


def label_values(path: str) -> frozenset:
    """The values a label file holds (checked by :func:`check_label`; remembered per file and modification time)."""
    key = (str(path), os.stat(path).st_mtime_ns if os.path.isfile(path) else 0)
    if key not in _LABEL_VALUES:
        _LABEL_VALUES[key] = frozenset(int(v) for v in np.unique(check_label(read_volume(path).array, path)))
    return _LABEL_VALUES[key]


def _key(case: Case, norm: Normalization) -> tuple:
    stamp = tuple(os.stat(p).st_mtime_ns if p and os.path.isfile(p) else 0 for p in (case.image, case.label))
    return (case.image, case.label, norm, stamp)


def load_case(case: Case, norm: Normalization = Normalization(), with_label: bool = True, cache: bool = True) -> LoadedCase:
    """Read, check and normalise one case (cached per process)."""
    key = _key(case, norm) + (with_label,)
    if cache and key in _CACHE:
        return _CACHE[key]
    vol = read_volume(case.image, window=norm.window)
    label = None
    if with_label and case.label is not None:
        lab = read_volume(case.label)
        if lab.array.shape != vol.array.shape:
            raise ScanError(case.label, f"label shape {lab.array.shape} does not match image shape {vol.array.shape} ({case.image})")
        label = check_label(lab.array, case.label)
    loaded = LoadedCase(case.case_id, normalize(replace_nonfinite(vol.array, case.image), norm), label, vol.spacing)
    if cache:
        _CACHE[key] = loaded
    return loaded


def load_cases(cases: list[Case], norm: Normalization = Normalization(), with_label: bool = True,
               progress: bool = False, cache: bool = True) -> list[LoadedCase]:
    """Load many cases in order, with an optional tqdm bar."""
    it = tqdm(cases, desc="reading scans", unit="case", disable=not progress, leave=False)
    return [load_case(c, norm, with_label=with_label, cache=cache) for c in it]


def clear_cache() -> None:
    _CACHE.clear()
    _LABEL_VALUES.clear()
