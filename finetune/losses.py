"""Segmentation losses: soft Dice, focal, and the hybrid cross-entropy + Dice loss.

All take logits (B, C, H, W) and integer targets (B, H, W) with values in [0, C) and return a
scalar. Class 0 is the background.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce_dice", "focal_dice", "ce")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (Milletari et al. 2016, V-Net, arXiv:1606.04797).

    Batch Dice, as in nnU-Net (Isensee et al. 2021): the sums run over the whole batch and all
    pixels, so slices without foreground do not produce 0/0. For class c >= 1, with softmax
    probabilities p and one-hot target t: ``dice_c = (2 sum(p t) + s) / (sum(p) + sum(t) + s)``.
    A class absent from target and prediction alike scores 1 (no loss).
    logits (B, C, H, W) float, target (B, H, W) int64 -> scalar.
    """
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"soft Dice needs at least 2 classes (background + foreground), got {num_classes}")
    probs = logits.float().softmax(1)[:, 1:]
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017, RetinaNet, arXiv:1708.02002), mean over pixels.

    ``FL = -w_t (1 - p_t)^gamma log p_t`` per pixel, with p_t the softmax probability of the true
    class and w_t its class weight (1 when ``weight`` is None). gamma = 0 gives cross-entropy.
    logits (B, C, H, W), target (B, H, W) -> scalar.
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    logp = F.log_softmax(logits.float(), 1).gather(1, target[:, None])[:, 0]
    loss = -((1 - logp.exp()) ** gamma) * logp
    if weight is not None:
        loss = loss * weight.to(loss.device, loss.dtype)[target]
    return loss.mean()


class SegmentationLoss(nn.Module):
    """Hybrid loss ``pixel term + dice_weight * soft Dice`` (the nnU-Net / TransUNet recipe).

    ``kind``: ``ce_dice`` (cross-entropy + Dice), ``focal_dice`` (focal + Dice) or ``ce``.
    ``class_weights`` (C floats or None) weight the pixel term only. forward(logits (B, C, H, W),
    target (B, H, W)) -> (total, {"ce_loss" or "focal_loss": ..., "dice_loss": ...}) with detached
    parts for logging (``dice_loss`` is 1 - soft Dice: it falls as Dice rises).
    """

    def __init__(self, kind: str = "ce_dice", num_classes: int = 2, class_weights=None,
                 focal_gamma: float = 2.0, dice_weight: float = 1.0):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        if class_weights is not None:
            if len(class_weights) != num_classes:
                raise ValueError(f"--class-weights needs {num_classes} values (one per class incl. background), "
                                 f"got {len(class_weights)}")
            class_weights = torch.tensor([float(w) for w in class_weights])
            if (class_weights < 0).any():
                raise ValueError(f"class weights must be >= 0, got {class_weights.tolist()}")
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.kind, self.focal_gamma, self.dice_weight = kind, focal_gamma, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor):
        if self.kind == "focal_dice":
            pixel = focal_loss(logits, target, self.focal_gamma, self.class_weights)
        else:
            pixel = F.cross_entropy(logits.float(), target, weight=self.class_weights)
        name = "focal_loss" if self.kind == "focal_dice" else "ce_loss"
        if self.kind == "ce":
            return pixel, {name: pixel.detach()}
        dice = soft_dice_loss(logits, target)
        return pixel + self.dice_weight * dice, {name: pixel.detach(), "dice_loss": dice.detach()}
