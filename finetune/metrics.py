"""Per-volume segmentation metrics: 3D Dice and HD95 (mm), with an explicit empty-set convention.

Convention (for one foreground class of one volume; P = predicted voxels, G = ground truth):

| P        | G        | Dice | HD95                                   |
|----------|----------|------|----------------------------------------|
| empty    | empty    | 1.0  | 0.0                                    |
| empty    | nonempty | 0.0  | NaN (undefined; left out of the means) |
| nonempty | empty    | 0.0  | NaN (undefined; left out of the means) |

Means over cases use every Dice value but only the defined HD95 values; metrics.json counts the
undefined ones (``hd95_undefined``) so a low mean HD95 cannot hide missed structures.

HD95 follows MedPy's ``hd95``: surface voxels are those removed by one binary erosion with
6-connectivity (a voxel on the array border counts as surface), distances are Euclidean in mm
(voxel spacing applied), and HD95 is the 95th percentile (numpy's linear interpolation) of the
union of both directed surface-distance sets.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice ``2|P & G| / (|P| + |G|)`` of two boolean arrays of any (equal) shape; 1.0 if both are empty."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match label shape {gt.shape}")
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=footprint, iterations=1)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``a`` to the nearest surface voxel of ``b`` (both non-empty)."""
    sa, sb = _surface(a), _surface(b)
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    return dist_to_b[sa]


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of ``mask`` (non-empty).

    HD95 computed inside the box of ``pred | gt`` equals HD95 over the whole array (tested), a
    few times faster on MSD-sized crops: every surface voxel of both masks lies inside, so does
    each one's nearest surface voxel, and a mask voxel on a face of the box is surface either way
    (its outward neighbour is in neither mask).
    """
    return ndimage.find_objects(np.asarray(mask, bool).view(np.uint8))[0]


def hd95(pred: np.ndarray, gt: np.ndarray, spacing=None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (see the module docstring for empty sets)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match label shape {gt.shape}")
    spacing = tuple(float(s) for s in (spacing or (1.0,) * pred.ndim))[: pred.ndim]
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not have one value per axis of shape {pred.shape}")
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return 0.0
    if not has_p or not has_g:
        return math.nan
    box = bounding_box(pred | gt)
    pred, gt = pred[box], gt[box]
    d = np.concatenate([surface_distances(pred, gt, spacing), surface_distances(gt, pred, spacing)])
    return float(np.percentile(d, 95))


def case_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing=None) -> dict:
    """Dice and HD95 of each foreground class 1..num_classes-1 for one volume of integer labels.

    Returns ``{"dice": {"1": .., ...}, "hd95": {"1": .., ...}, "mean_dice": ..}`` (HD95 may be NaN).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match label shape {gt.shape}")
    dice, dist = {}, {}
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        dice[str(c)] = dice_score(p, g)
        dist[str(c)] = hd95(p, g, spacing)
    return {"dice": dice, "hd95": dist, "mean_dice": float(np.mean(list(dice.values())))}


def summarize(per_case: list[dict]) -> dict:
    """Means over cases: ``mean_dice`` (cases x classes), ``std_dice`` (over per-case means),
    per-class Dice / HD95 means, ``mean_hd95`` over the defined values and ``hd95_undefined``."""
    if not per_case:
        raise ValueError("no cases to summarise")
    classes = list(per_case[0]["dice"])
    dice = np.array([[c["dice"][k] for k in classes] for c in per_case], dtype=float)
    dist = np.array([[c["hd95"][k] for k in classes] for c in per_case], dtype=float)

    def nanmean(x):
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else math.nan

    return {"mean_dice": float(dice.mean()), "std_dice": float(dice.mean(1).std()),
            "dice_per_class": {k: float(dice[:, i].mean()) for i, k in enumerate(classes)},
            "mean_hd95": nanmean(dist.ravel()),
            "hd95_per_class": {k: nanmean(dist[:, i]) for i, k in enumerate(classes)},
            "hd95_undefined": int(np.isnan(dist).sum()), "num_cases": len(per_case)}
