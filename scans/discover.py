"""Find the cases of a dataset folder.

Two layouts:
- MSD / nnU-Net: ``imagesTr/`` (+ ``labelsTr/``), described by ``dataset.json`` when present,
  otherwise images and labels are paired by case id (``CASE_0000.nii.gz`` -> ``CASE``).
- A plain folder, searched recursively, of unlabelled scans: NIfTI, PNG/TIFF, ``.npy`` files,
  and DICOM series (each folder of DICOM slices is one case).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import ScanError
from .io import KNOWN_EXTS, extension, is_dicom_file, strip_extension

IGNORED_EXTS = {".json", ".txt", ".md", ".csv", ".tsv", ".yaml", ".yml", ".pdf", ".html"}
CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


@dataclass(frozen=True)
class Case:
    """One scan: ``image`` is a file or a DICOM folder; ``label`` is None when unlabelled."""

    case_id: str
    image: str
    label: str | None = None


def case_id_from_name(name: str) -> str:
    """``hippocampus_001_0000.nii.gz`` -> ``hippocampus_001`` (nnU-Net channel suffix dropped)."""
    return CHANNEL_SUFFIX.sub("", strip_extension(name))


def dataset_root(path: str | os.PathLike) -> Path | None:
    """The MSD / nnU-Net dataset folder (``imagesTr/``, ``labelsTr/`` or ``dataset.json``) that is or holds ``path``,
    else None. Commands refuse to write there: an output could replace a scan, a label or the metadata."""
    path = Path(path).resolve()
    for p in (path, *path.parents):
        if (p / "imagesTr").is_dir() or (p / "labelsTr").is_dir() or (p / "dataset.json").is_file():
            return p
    return None


def find_cases(data_dir: str | os.PathLike) -> list[Case]:
    """All cases of ``data_dir``, sorted by case id."""
    root = Path(data_dir)
    if not root.exists():
        raise ScanError(root, "dataset folder does not exist")
    if not root.is_dir():
        raise ScanError(root, "expected a dataset folder, got a file")
    if (root / "imagesTr").is_dir() or (root / "dataset.json").is_file():
        cases = _msd_cases(root)
    else:
        cases = _plain_cases(root)
    if not cases:
        raise ScanError(root, "no scans found (expected imagesTr/ + labelsTr/, or NIfTI/DICOM/PNG/TIFF/.npy files)")
    return cases


def _scan_files(folder: Path) -> list[Path]:
    """Files of one MSD folder; an unknown extension is an error."""
    out = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        if extension(f) not in KNOWN_EXTS:
            raise ScanError(f, f"unknown extension {extension(f) or '(none)'!r}; expected one of {', '.join(KNOWN_EXTS)}")
        out.append(f)
    return out


def _msd_cases(root: Path) -> list[Case]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise ScanError(images_dir, "missing imagesTr/ folder")
    listing = root / "dataset.json"
    if listing.is_file():
        try:
            meta = json.loads(listing.read_text())
        except json.JSONDecodeError as e:
            raise ScanError(listing, f"invalid JSON: {e}") from None
        entries = meta.get("training") or []
        if entries and isinstance(entries[0], dict):
            cases = []
            for e in entries:
                image = root / e["image"]
                if not image.exists():  # nnU-Net v1 lists CASE.nii.gz while the file is CASE_0000.nii.gz
                    alt = image.with_name(strip_extension(image.name) + "_0000" + extension(image))
                    image = alt if alt.exists() else image
                if not image.exists():
                    raise ScanError(image, "listed in dataset.json but missing")
                label = root / e["label"] if e.get("label") else None
                if label is not None and not label.exists():
                    raise ScanError(label, "listed in dataset.json but missing")
                cases.append(Case(case_id_from_name(image.name), str(image), None if label is None else str(label)))
            return sorted(cases, key=lambda c: c.case_id)
    labels = {}
    if labels_dir.is_dir():
        labels = {case_id_from_name(f.name): f for f in _scan_files(labels_dir)}
    cases = []
    for f in _scan_files(images_dir):
        cid = case_id_from_name(f.name)
        label = labels.get(cid)
        cases.append(Case(cid, str(f), None if label is None else str(label)))
    return sorted(cases, key=lambda c: c.case_id)


def _plain_cases(root: Path) -> list[Case]:
    cases = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        dicom = [f for f in sorted(filenames) if not f.startswith(".") and is_dicom_file(folder / f)]
        if dicom:
            rel = folder.relative_to(root).as_posix()
            cases.append(Case(rel.replace("/", "_") if rel != "." else root.name, str(folder)))
        for name in sorted(filenames):
            f = folder / name
            if name.startswith(".") or name in dicom:
                continue
            ext = extension(f)
            if ext in IGNORED_EXTS:
                continue
            if ext not in KNOWN_EXTS:
                raise ScanError(f, f"unknown extension {ext or '(none)'!r}; expected one of {', '.join(KNOWN_EXTS)} or a DICOM folder")
            rel = f.relative_to(root).as_posix()
            cases.append(Case(CHANNEL_SUFFIX.sub("", strip_extension(rel).replace("/", "_")), str(f)))
    dupes = sorted(i for i, n in Counter(c.case_id for c in cases).items() if n > 1)
    if dupes:
        raise ScanError(root, f"two scans map to the same case id: {', '.join(dupes[:5])}")
    return sorted(cases, key=lambda c: c.case_id)
