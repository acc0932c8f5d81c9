"""Readers for scans on disk: NIfTI, DICOM series, PNG/TIFF (8/16-bit), NumPy.

Every reader returns a :class:`Volume` whose ``array`` is 3D ``(X, Y, Z)`` (2D images
become ``(H, W, 1)``), with the voxel spacing in mm and the 4x4 affine where the format
carries one. Any failure is raised as :class:`ScanError` naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ScanError

NIFTI_EXTS = (".nii.gz", ".nii")
IMAGE2D_EXTS = (".png", ".tif", ".tiff")
NPY_EXTS = (".npy",)
DICOM_EXTS = (".dcm",)
KNOWN_EXTS = NIFTI_EXTS + IMAGE2D_EXTS + NPY_EXTS + DICOM_EXTS


@dataclass
class Volume:
    """A decoded scan: ``array`` (X, Y, Z), ``spacing`` (mm per axis), ``affine`` (4x4)."""

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: str = ""
    dtype: str = ""  # dtype on disk, before any conversion


def extension(path: str | os.PathLike) -> str:
    """Lower-case extension, with ``.nii.gz`` treated as one extension."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def strip_extension(name: str) -> str:
    ext = extension(name)
    return name[: len(name) - len(ext)] if ext else name


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a ``.dcm`` file or a file with the DICOM preamble magic ``DICM``."""
    p = Path(path)
    if p.suffix.lower() == ".dcm":
        return True
    if p.suffix:
        return False
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_volume(path: str | os.PathLike, window: tuple[float, float] | None = None) -> Volume:
    """Read any supported scan. A directory is read as one DICOM series."""
    p = Path(path)
    if not p.exists():
        raise ScanError(p, "no such file or folder")
    if p.is_dir():
        return read_dicom_series(p, window=window)
    ext = extension(p)
    if ext in NIFTI_EXTS:
        return read_nifti(p)
    if ext in IMAGE2D_EXTS:
        return read_image2d(p)
    if ext in NPY_EXTS:
        return read_npy(p)
    if is_dicom_file(p):
        return read_dicom_series([p], window=window)
    raise ScanError(p, f"unknown extension {ext or '(none)'!r}; expected one of {', '.join(KNOWN_EXTS)} or a DICOM folder")


def read_nifti(path: str | os.PathLike) -> Volume:
    """NIfTI-1/2 (.nii, .nii.gz); the on-disk dtype is kept (scaling applied if the header has one)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
        dtype = str(img.get_data_dtype())
        spacing = tuple(float(s) for s in img.header.get_zooms()[: arr.ndim])
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:  # nibabel raises many types for truncated / corrupt files
        raise ScanError(path, f"cannot read NIfTI (corrupt or truncated?): {type(e).__name__}: {e}") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ScanError(path, f"expected a 3D volume, got shape {arr.shape}")
    return Volume(np.ascontiguousarray(arr), spacing[:3] + (1.0,) * (3 - len(spacing[:3])), affine, str(path), dtype)


def read_image2d(path: str | os.PathLike) -> Volume:
    """8- or 16-bit grayscale PNG/TIFF as ``(H, W, 1)``; a multi-page TIFF as ``(H, W, pages)``."""
    ext = extension(path)
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                axes = tif.series[0].axes
                arr = tif.asarray()
            if arr.ndim == 3 and not axes.endswith("S"):  # a stack of grayscale pages: (pages, H, W)
                return Volume(np.ascontiguousarray(np.moveaxis(arr, 0, -1)), (1.0, 1.0, 1.0), np.eye(4), str(path), str(arr.dtype))
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.array(im)
    except Exception as e:
        raise ScanError(path, f"cannot read image: {type(e).__name__}: {e}") from None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise ScanError(path, f"expected a grayscale image, got {arr.shape[-1]} channels")
    if arr.ndim == 2:
        arr = arr[..., None]
    return Volume(np.ascontiguousarray(arr), (1.0, 1.0, 1.0), np.eye(4), str(path), str(arr.dtype))


def read_npy(path: str | os.PathLike) -> Volume:
    """A 2D or 3D ``.npy`` array (spacing unknown: 1 mm)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ScanError(path, f"cannot read .npy: {type(e).__name__}: {e}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ScanError(path, f"expected a 2D or 3D array, got shape {arr.shape}")
    return Volume(np.ascontiguousarray(arr), (1.0, 1.0, 1.0), np.eye(4), str(path), str(arr.dtype))


def read_dicom_series(source, window: tuple[float, float] | None = None) -> Volume:
    """One DICOM series (a folder of slices, or a list of files) as ``(rows, cols, slices)``.

    Slices are sorted by their position along the slice normal (ImagePositionPatient and
    ImageOrientationPatient), else by InstanceNumber. RescaleSlope/Intercept are applied;
    ``window=(centre, width)`` clips to that window. A folder that mixes series is an error.
    """
    import pydicom

    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and is_dicom_file(f))
        where = folder
    else:
        files = [Path(f) for f in source]
        where = files[0].parent if files else Path(".")
    if not files:
        raise ScanError(where, "no DICOM files found")
    slices = []
    for f in files:
        try:
            slices.append(pydicom.dcmread(str(f)))
        except Exception as e:
            raise ScanError(f, f"cannot read DICOM: {type(e).__name__}: {e}") from None
    series = {str(getattr(s, "SeriesInstanceUID", "")) for s in slices}
    if len(series) > 1:
        raise ScanError(where, f"folder mixes {len(series)} DICOM series ({', '.join(sorted(series))}); put each series in its own folder")

    def position(ds) -> float:
        if hasattr(ds, "ImagePositionPatient") and hasattr(ds, "ImageOrientationPatient"):
            o = np.asarray(ds.ImageOrientationPatient, dtype=float)
            return float(np.dot(np.cross(o[:3], o[3:]), np.asarray(ds.ImagePositionPatient, dtype=float)))
        return float(getattr(ds, "InstanceNumber", 0))

    slices.sort(key=position)
    try:
        planes = []
        for ds in slices:
            px = ds.pixel_array.astype(np.float32)
            px = px * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
            planes.append(px)
        arr = np.stack(planes, axis=-1)
    except Exception as e:
        raise ScanError(where, f"cannot decode DICOM pixels: {type(e).__name__}: {e}") from None
    if window is not None:
        arr = apply_window(arr, *window)
    first = slices[0]
    row, col = (float(v) for v in getattr(first, "PixelSpacing", (1.0, 1.0)))
    if len(slices) > 1:
        gap = abs(position(slices[1]) - position(slices[0])) or float(getattr(first, "SliceThickness", 1.0))
    else:
        gap = float(getattr(first, "SliceThickness", 1.0))
    return Volume(arr, (row, col, gap), dicom_affine(first, (row, col, gap)), str(where), str(first.pixel_array.dtype))


def dicom_affine(first, spacing: tuple[float, float, float]) -> np.ndarray:
    """4x4 voxel (row, column, slice) -> RAS mm affine of a series from its first slice (NIfTI convention).

    DICOM positions are LPS: voxel (i, j, k) lies at ImagePositionPatient + i * row spacing *
    column direction + j * column spacing * row direction + k * gap * slice normal; x and y
    change sign for RAS. Without orientation tags: the identity scaled by the spacing.
    """
    aff = np.diag([*spacing, 1.0])
    if not (hasattr(first, "ImageOrientationPatient") and hasattr(first, "ImagePositionPatient")):
        return aff
    o = np.asarray(first.ImageOrientationPatient, dtype=float)
    along_row, along_col = o[:3], o[3:]
    aff[:3, 0] = along_col * spacing[0]
    aff[:3, 1] = along_row * spacing[1]
    aff[:3, 2] = np.cross(along_row, along_col) * spacing[2]
    aff[:3, 3] = np.asarray(first.ImagePositionPatient, dtype=float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


def apply_window(arr: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Clip to the display window ``[centre - width/2, centre + width/2]`` (CT windowing)."""
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    return np.clip(arr, centre - width / 2.0, centre + width / 2.0)
