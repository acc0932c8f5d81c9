"""What the protocol needs to know about a dataset that its images do not say.

``DATA_DIR/protocol.json`` (optional; every key optional)::

    {"subjects": {"case_id": "subject_id", ...},   # volumes of one subject (never split apart)
     "subjects_method": "how the map was derived",
     "flip_axes": [0],                               # volume axes a flip may reverse
     "flip_axes_reason": "why the other axes may not be flipped"}

- **Subjects.** Two volumes of one subject (in MSD Hippocampus, the left and right crops of one
  scan) must sit on one side of the test / training-pool boundary. A case missing from the
  map is its own subject. ``python -m scans split --groups FILE`` takes a map from elsewhere
  (a JSON object ``{case: subject}``, or a file in this format).
- **Flips.** A flip along an axis whose direction defines a class (anterior / posterior)
  changes what the label means. Only the volume axes listed may be flipped by augmentation
  or test-time augmentation; without a protocol file, none is.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ScanError

PROTOCOL = "protocol.json"


@dataclass(frozen=True)
class Protocol:
    subjects: dict[str, str] = field(default_factory=dict)
    subjects_method: str = ""
    flip_axes: tuple[int, ...] = ()
    flip_axes_reason: str = ""
    path: str | None = None


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as e:
        raise ScanError(path, f"cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ScanError(path, f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ScanError(path, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def load_protocol(data_dir: str | os.PathLike) -> Protocol:
    """The dataset's ``protocol.json``, or an empty Protocol (no subjects known, no flips) without one."""
    path = Path(data_dir) / PROTOCOL
    if not path.is_file():
        return Protocol()
    obj = _read_json(path)
    unknown = sorted(set(obj) - {"subjects", "subjects_method", "flip_axes", "flip_axes_reason"})
    if unknown:
        raise ScanError(path, f"unknown keys {unknown}")
    subjects = _check_map(obj.get("subjects") or {}, path)
    axes = obj.get("flip_axes") or []
    if not isinstance(axes, list) or any(a not in (0, 1, 2) for a in axes):
        raise ScanError(path, f"flip_axes must be a list of volume axes 0, 1, 2, got {axes!r}")
    return Protocol(subjects, str(obj.get("subjects_method", "")), tuple(sorted(set(axes))),
                    str(obj.get("flip_axes_reason", "")), str(path))


FLIP_AXES_HELP = ("volume axes that may be flipped: auto (the dataset's protocol.json; none without one), none, "
                  "or axes 0 1 2; never an axis whose direction defines a class")


def resolve_flip_axes(spec: list[str], data_dir: str | os.PathLike) -> tuple[int, ...]:
    """Volume axes a flip may reverse, from a ``--flip-axes`` value: ``["auto"]`` (the dataset's
    protocol.json; none for a plain folder or a dataset without one), ``["none"]``, or axes 0 1 2.
    Raises ValueError on anything else."""
    if list(spec) == ["auto"]:
        return load_protocol(data_dir).flip_axes if Path(data_dir).is_dir() else ()
    if list(spec) == ["none"]:
        return ()
    try:
        axes = {int(a) for a in spec}
    except ValueError:
        axes = None
    if not axes or not axes <= {0, 1, 2}:
        raise ValueError(f"--flip-axes takes auto, none or volume axes 0 1 2, got {' '.join(map(str, spec))}")
    return tuple(sorted(axes))


def _check_map(m, path) -> dict[str, str]:
    if not isinstance(m, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in m.items()):
        raise ScanError(path, "a subject map is a JSON object {case_id: subject_id}")
    return {k: str(v) for k, v in m.items()}


def load_groups(path: str | os.PathLike) -> dict[str, str]:
    """A case -> subject map from ``path``: a plain ``{case: subject}`` object or a protocol file."""
    obj = _read_json(Path(path))
    return _check_map(obj["subjects"] if isinstance(obj.get("subjects"), dict) else obj, path)


def subject_map(case_ids, groups: dict[str, str] | None) -> dict[str, str]:
    """case -> subject for every case; a case not in ``groups`` is its own subject."""
    groups = groups or {}
    return {c: groups.get(c, c) for c in case_ids}


def consecutive_pairs(case_ids) -> dict[str, str]:
    """MSD Hippocampus: cases ``2k-1`` and ``2k`` are the left and right crops of one scan.

    ``hippocampus_041`` and ``hippocampus_042`` -> subject ``subject_021``; a case whose
    partner is absent is a subject alone. The evidence that this holds on the data is in
    :func:`pairing_evidence` (tested in tests/test_scans.py).
    """
    out = {}
    for c in case_ids:
        m = re.search(r"(\d+)$", c)
        if m is None:
            raise ValueError(f"case id {c!r} does not end in a number")
        out[c] = f"subject_{(int(m.group(1)) + 1) // 2:03d}"
    return out


def intensity_fingerprint(array) -> dict:
    """What a volume's acquisition leaves in its voxel values: dtype, smallest step, 99th percentile."""
    values = np.unique(array)
    step = float(np.diff(values).min()) if len(values) > 1 else 0.0
    return {"dtype": str(array.dtype), "step": step, "p99": float(np.percentile(array, 99))}


def pairing_evidence(fingerprints: dict[str, dict], pairs: list[tuple[str, str]]) -> dict:
    """How often the volumes of ``pairs`` share their fingerprint: same smallest intensity step,
    same dtype, and the median relative difference of their 99th percentiles."""
    if not pairs:
        return {"pairs": 0}
    f = fingerprints
    return {"pairs": len(pairs),
            "same_step": float(np.mean([f[a]["step"] == f[b]["step"] for a, b in pairs])),
            "same_dtype": float(np.mean([f[a]["dtype"] == f[b]["dtype"] for a, b in pairs])),
            "median_p99_rel_diff": float(np.median([abs(f[a]["p99"] - f[b]["p99"]) / max(f[a]["p99"], f[b]["p99"], 1e-12)
                                                    for a, b in pairs]))}
