"""How a trained segmenter is applied to a scan: one description (:class:`Inference`) that the
evaluation at the end of fine-tuning, ``finetune.predict`` and ``finetune.export`` share, stored in
``model.pt``, so what predict writes for a test case is what the evaluation scored.

Every slice of a volume is predicted along the slice axis, the softmax maps are stacked back
into the volume. Slices are centre-padded with zeros to at least the training size, as in
training, and the prediction is cropped back; nothing is cropped away (larger slices keep their
size, the networks take any H, W), and a slice beyond a memory budget is predicted in
overlapping tiles. Measured on a validation split of the training pool, padding to the training
size scores about 0.01 Dice higher than predicting the unpadded slices, which the networks pad
at the bottom and right instead. With a training spacing, a scan is resampled in-plane to it,
predicted, and the probabilities resampled back to the scan's own grid.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

import engine
import scans

MAX_PIXELS = 64 * 256 * 256  # pixels per forward pass: whole slices up to this size, tiles beyond


@dataclass(frozen=True)
class Inference:
    """How a trained segmenter is applied: slice ``axis``, training ``size`` (H, W) slices are padded to,
    intensity ``normalization``, in-plane training ``spacing`` (mm, or None), the label-safe ``flip_axes``
    (volume axes) and whether test-time augmentation averages them in (``tta``), mixed precision (``amp``:
    float16 on CUDA, bfloat16 on CPU), and the batch and memory budget of a forward pass."""

    axis: int = 2
    size: tuple[int, int] = (48, 64)
    normalization: scans.Normalization = scans.Normalization()
    spacing: tuple[float, float] | None = None
    flip_axes: tuple[int, ...] = ()
    tta: bool = False
    amp: bool = False
    batch_size: int = 64
    max_pixels: int = MAX_PIXELS

    @property
    def tta_flips(self) -> tuple[int, ...]:
        """Slice axes (0, 1) whose flips test-time augmentation averages in (none without ``tta``)."""
        return scans.slice_flips(self.flip_axes, self.axis) if self.tta else ()

    def replace(self, **changes) -> "Inference":
        return type(self)(**{**asdict(self), "normalization": self.normalization, **changes})

    def to_dict(self) -> dict:
        """Plain values (model.pt loads with weights_only=True)."""
        return {"axis": int(self.axis), "size": [int(s) for s in self.size], "normalization": self.normalization.to_dict(),
                "spacing": [float(v) for v in self.spacing] if self.spacing else None,
                "flip_axes": [int(a) for a in self.flip_axes], "tta": bool(self.tta), "amp": bool(self.amp),
                "batch_size": int(self.batch_size), "max_pixels": int(self.max_pixels)}

    @classmethod
    def from_dict(cls, d: dict) -> "Inference":
        n = d["normalization"]
        norm = scans.Normalization(mode=n["mode"], clip=tuple(n["clip"]) if n.get("clip") else None,
                                   window=tuple(n["window"]) if n.get("window") else None)
        return cls(axis=d["axis"], size=tuple(d["size"]), normalization=norm,
                   spacing=tuple(d["spacing"]) if d.get("spacing") else None, flip_axes=tuple(d.get("flip_axes", ())),
                   tta=bool(d.get("tta", False)), amp=bool(d.get("amp", False)), batch_size=d.get("batch_size", 64),
                   max_pixels=d.get("max_pixels", MAX_PIXELS))

    @torch.no_grad()
    def volume(self, model, image: np.ndarray, device) -> np.ndarray:
        """Softmax probabilities (C, X, Y, Z) of a normalised volume (X, Y, Z) on its own grid (no resampling);
        the model must be in eval mode."""
        device = torch.device(device)
        slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, self.axis, 0), dtype=np.float32))[:, None]
        h, w = slices.shape[-2:]
        slices, (top, left) = centre_pad(slices, self.size)
        pixels = slices.shape[-2] * slices.shape[-1]
        per_pass = max(1, min(self.batch_size, self.max_pixels // pixels))
        out = []
        for x in slices.split(per_pass):
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            with engine.autocast(device, self.amp):
                forward = (lambda t: predict_tiled(model, t, self.max_pixels)) if pixels > self.max_pixels else model
                p = forward(x).float().softmax(1)
                for dim in (-2 + a for a in self.tta_flips):
                    p = p + forward(x.flip(dim)).float().softmax(1).flip(dim)
                p = p / (1 + len(self.tta_flips))
            out.append(p[..., top : top + h, left : left + w].cpu())
        probs = torch.cat(out).permute(1, 0, 2, 3).numpy()  # (C, slices, h, w)
        return np.moveaxis(probs, 1, self.axis + 1)

    def probabilities(self, model, image: np.ndarray, spacing, device) -> np.ndarray:
        """(C, X, Y, Z) probabilities on the scan's own grid of a normalised volume with voxel ``spacing`` (mm):
        with a training ``spacing``, resampled in-plane to it, predicted, and resampled back (linear)."""
        if not self.spacing:
            return self.volume(model, image, device)
        small = scans.resample_inplane(image, spacing, self.spacing, self.axis, order=1)
        return scans.resample_to_shape(self.volume(model, small, device), image.shape, order=1)

    def scan(self, model, volume: scans.Volume, device) -> np.ndarray:
        """(C, X, Y, Z) probabilities of a scan as read from disk: non-finite voxels replaced (with a warning),
        normalised as the run normalised its training scans, predicted on the CPU deterministically."""
        image = scans.normalize(scans.replace_nonfinite(volume.array, volume.path), self.normalization)
        with engine.deterministic_on_cpu(device):  # as in the run's evaluation
            return self.probabilities(model, image, volume.spacing, device)


def centre_pad(x: torch.Tensor, size) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (..., h, w) at the centre to at least ``size``; return it and the (top, left) offset."""
    (top, bottom), (left, right) = scans.centre_padding(*x.shape[-2:], size)
    return torch.nn.functional.pad(x, (left, right, top, bottom)), (top, left)


def tile_starts(length: int, tile: int) -> list[int]:
    """Starts of tiles of ``tile`` covering ``length`` with about half a tile of overlap."""
    if length <= tile:
        return [0]
    n = -(-(length - tile) // (tile // 2)) + 1
    return sorted({round(i * (length - tile) / (n - 1)) for i in range(n)})


def predict_tiled(model, x: torch.Tensor, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Logits (B, C, H, W) of large slices from square tiles of at most ``max_pixels`` pixels
    (side a multiple of 16) overlapping by about half a tile; overlaps average the logits."""
    side = max(16, int(max_pixels ** 0.5) // 16 * 16)
    th, tw = min(side, x.shape[-2]), min(side, x.shape[-1])
    total, count = None, torch.zeros(x.shape[-2:], device=x.device)
    for top in tile_starts(x.shape[-2], th):
        for left in tile_starts(x.shape[-1], tw):
            y = model(x[..., top : top + th, left : left + tw]).float()
            if total is None:
                total = torch.zeros(*y.shape[:2], *x.shape[-2:], device=x.device)
            total[..., top : top + th, left : left + tw] += y
            count[top : top + th, left : left + tw] += 1
    return total / count
