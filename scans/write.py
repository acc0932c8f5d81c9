"""Write segmentations in the geometry of the scan they were predicted from.

NIfTI in -> ``CASE.nii.gz`` with the input's shape, affine and header (data type uint8); a DICOM
series in -> ``CASE.nii.gz`` with the series' geometry (``io.dicom_affine``); PNG / TIFF in ->
``CASE.png`` (a multi-page TIFF -> ``CASE.tif``, one page per slice); ``.npy`` in -> ``CASE.npy``.
Label values are written as they are (0 background, 1, 2, ... the classes of ``dataset.json``).
Probabilities (optional) go beside: ``CASE_probabilities.nii.gz`` (X, Y, Z, C float32) for
volumes, ``CASE_probabilities.npy`` (C, H, W[, pages]) for images. Every file is written
atomically: an interrupted run leaves no half-written output.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from atomicio import atomic_path

from .discover import case_id_from_name
from .io import IMAGE2D_EXTS, NIFTI_EXTS, NPY_EXTS, Volume, extension


def output_name(source: Volume) -> str:
    """File name of the segmentation of ``source``: its case id plus the extension it is written with."""
    p = Path(source.path)
    if p.is_dir():  # a DICOM series folder
        return f"{p.name}.nii.gz"
    ext = extension(p)
    case = case_id_from_name(p.name)
    if ext in IMAGE2D_EXTS:
        return f"{case}.png" if source.array.shape[2] == 1 else f"{case}.tif"
    if ext in NPY_EXTS:
        return f"{case}.npy"
    return f"{case}.nii.gz"  # NIfTI, single DICOM file


def write_segmentation(source: Volume, labels: np.ndarray, out_dir, probabilities: np.ndarray | None = None) -> Path:
    """Write ``labels`` (X, Y, Z) of ``source`` (and optionally its ``probabilities`` (C, X, Y, Z))
    into ``out_dir``; returns the label file's path."""
    if labels.shape != source.array.shape:
        raise ValueError(f"labels of shape {labels.shape} for a scan of shape {source.array.shape} ({source.path})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = output_name(source)
    out = out_dir / name
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    stem = name[: -len(extension(name))]
    if name.endswith(".nii.gz"):
        _write_nifti(source, labels, out)
        if probabilities is not None:
            _write_nifti(source, np.moveaxis(probabilities.astype(np.float32), 0, -1), out_dir / f"{stem}_probabilities.nii.gz")
        return out
    if name.endswith(".png"):
        from PIL import Image

        with atomic_path(out) as tmp:
            Image.fromarray(labels[:, :, 0]).save(tmp, format="PNG")
    elif name.endswith(".tif"):
        import tifffile

        with atomic_path(out) as tmp:
            tifffile.imwrite(tmp, np.moveaxis(labels, -1, 0))
    else:
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, labels.reshape(np.load(source.path, mmap_mode="r").shape))
    if probabilities is not None:
        with atomic_path(out_dir / f"{stem}_probabilities.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, probabilities.astype(np.float32))
    return out


def _write_nifti(source: Volume, data: np.ndarray, out: Path) -> None:
    """A NIfTI with the source's affine and header (a NIfTI source) or its affine alone (DICOM)."""
    import nibabel as nib

    if extension(source.path) in NIFTI_EXTS:
        ref = nib.load(source.path)
        header = ref.header.copy()
        header.set_data_dtype(data.dtype)
        if data.ndim == 3:
            data = data.reshape(ref.shape)  # a 2D or (X, Y, Z, 1) source keeps its own shape
        img = type(ref)(data, ref.affine, header)
        img.header.set_slope_inter(1.0, 0.0)
    else:
        img = nib.Nifti1Image(data, source.affine)
        img.header.set_data_dtype(data.dtype)
        img.set_qform(source.affine, code=1)
        img.set_sform(source.affine, code=1)
    with atomic_path(out, suffix=".nii.gz") as tmp:
        nib.save(img, os.fspath(tmp))
