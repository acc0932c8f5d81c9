"""Whole-volume inference from 2D slices, per-volume metrics, and the TensorBoard overlay panel.

Every slice of a volume is predicted, the softmax maps are stacked back into the volume, and the
argmax is scored in 3D. Slices are centre-padded with zeros to at least the training size, as in
training, and the prediction is cropped back; nothing is cropped away (larger slices keep their
size, the networks take any H, W). Measured on a validation split of the training pool, this
scores about 0.01 Dice higher than predicting the unpadded slices, which the networks pad at the
bottom and right instead.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

import engine
import scans

from .metrics import case_metrics, summarize

# RGB colours of classes 1, 2, ... in the overlay panel
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [245, 130, 48]], np.float32)


def centre_pad(x: torch.Tensor, size) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (..., h, w) at the centre to at least ``size``; return it and the (top, left) offset."""
    h, w = x.shape[-2:]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    top, left = ph // 2, pw // 2
    return torch.nn.functional.pad(x, (left, pw - left, top, ph - top)), (top, left)


@torch.no_grad()
def predict_volume(model, image: np.ndarray, axis: int = 2, device="cpu", tta=(),
                   amp: bool = False, size=(48, 64), batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities (C, X, Y, Z) of a volume (X, Y, Z) predicted slice by slice along ``axis``.

    Slices are centre-padded to at least ``size`` (the training size) and cropped back.
    ``tta``: slice axes (0, 1) whose flips are averaged in (only label-safe ones: the flips
    training used); empty for none. The model must be in eval mode.
    """
    device = torch.device(device)
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, axis, 0), dtype=np.float32))[:, None]
    h, w = slices.shape[-2:]
    slices, (top, left) = centre_pad(slices, size)
    out = []
    for x in slices.split(batch_size):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with engine.autocast(device, amp):
            p = model(x).float().softmax(1)
            for dim in (-2 + a for a in tta):
                p = p + model(x.flip(dim)).float().softmax(1).flip(dim)
            p = p / (1 + len(tta))
        out.append(p[..., top : top + h, left : left + w].cpu())
    probs = torch.cat(out).permute(1, 0, 2, 3).numpy()  # (C, slices, h, w)
    return np.moveaxis(probs, 1, axis + 1)


def evaluate_cases(model, loaded: list[scans.LoadedCase], num_classes: int, axis: int = 2, device="cpu",
                   tta=(), amp: bool = False, size=(48, 64), progress: bool = False) -> tuple[list[dict], dict]:
    """Per-case Dice/HD95 (``metrics.case_metrics`` plus ``case_id``) and their ``metrics.summarize``.

    Puts the model in eval mode and restores its previous mode.
    """
    was_training = model.training
    model.eval()
    per_case = []
    try:
        for c in tqdm(loaded, desc="evaluating", unit="case", disable=not progress, leave=False):
            pred = predict_volume(model, c.image, axis, device, tta, amp, size).argmax(0)
            per_case.append({"case_id": c.case_id, **case_metrics(pred, c.label, num_classes, c.spacing)})
    finally:
        model.train(was_training)
    return per_case, summarize(per_case)


def panel_slices(loaded: list[scans.LoadedCase], axis: int = 2, n: int = 4) -> list[tuple[int, int]]:
    """Fixed slices for the overlay panel: for each of the first ``n`` cases, the slice with the most foreground."""
    picks = []
    for i, c in enumerate(loaded[:n]):
        area = np.moveaxis(c.label > 0, axis, 0).reshape(c.label.shape[axis], -1).sum(1)
        picks.append((i, int(area.argmax())))
    return picks


def _overlay(gray: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    rgb = np.repeat(np.clip(gray, 0, 1)[..., None] * 255, 3, -1).astype(np.float32)
    for c in range(1, int(labels.max()) + 1):
        m = labels == c
        rgb[m] = (1 - alpha) * rgb[m] + alpha * PALETTE[(c - 1) % len(PALETTE)]
    return rgb.astype(np.uint8)


@torch.no_grad()
def overlay_panel(model, loaded: list[scans.LoadedCase], picks, axis: int = 2, size=(48, 64), device="cpu") -> np.ndarray:
    """uint8 image (2 * rows * H, 2 * 3 * W, 3): per picked slice, image | label overlay | prediction
    overlay, each tile padded to ``size`` and enlarged 2x (nearest) for viewing."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        for case_index, s in picks:
            c = loaded[case_index]
            img = np.take(c.image, s, axis=axis)
            lab = np.take(c.label, s, axis=axis)
            pred = predict_volume(model, img[..., None], 2, device, size=size)[:, :, :, 0].argmax(0)
            tiles = [_overlay(img, np.zeros_like(lab)), _overlay(img, lab), _overlay(img, pred)]
            rows.append(np.concatenate([scans.pad_or_crop(t, tuple(size)) for t in tiles], 1))
    finally:
        model.train(was_training)
    return np.concatenate(rows, 0).repeat(2, 0).repeat(2, 1)
