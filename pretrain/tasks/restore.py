"""Restoration of corrupted slices by a whole segmenter (Models Genesis, Zhou et al. MICCAI 2019 /
MedIA 2021, arXiv:2004.07882; masked blocks as in masked image modelling, e.g. SparK, Tian et al.
ICLR 2023, arXiv:2301.03580).

A U-Net or a TransUNet (``--arch``) over the chosen encoder learns to restore a slice from a
corrupted copy of it, so its decoder (and TransUNet's transformer) learn the target domain
too, not only its encoder. The corruptions, each applied with its own probability to the
scanned content of the slice, in this order:

- non-linear intensity transformation: a random monotonic Bezier curve maps intensities
  (``--nonlinear-prob``), inverted half of the time;
- local pixel shuffling: pixels shuffled within many small windows (``--shuffle-prob``);
- painting (``--paint-prob``): out-painting (``--outpaint-share`` of the paintings: everything
  but a few windows replaced by noise) or in-painting (a few windows replaced by noise);
- masked blocks: a ``--mask-ratio`` share of ``--mask-patch`` blocks set to 0.

The loss is the mean squared error of the restored slice (a sigmoid output, intensities in
[0, 1]) over the scanned content. The pretext score logged as ``accuracy`` is the share of the
corrupted input's error that the network removes: ``1 - MSE(restored) / MSE(corrupted)`` (0: no
better than the corrupted input, 1: perfect). The run writes ``encoder.pt`` like every task and
``network.pt``: every weight of the segmenter but its output layer, for ``finetune --init``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import models

from ..registry import TASKS, PretextTask
from ..views import content

def bezier_curve(rng: np.random.Generator, points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A random cubic Bezier from (0, 0) to (1, 1): (x, y) sampled at ``points`` values, x increasing."""
    p1, p2 = rng.random(2), rng.random(2)
    t = np.linspace(0, 1, points)[:, None]
    curve = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * np.ones(2)
    x, y = curve[:, 0], curve[:, 1]
    order = np.argsort(x)
    return x[order], y[order]


def random_window(rng: np.random.Generator, h: int, w: int, low: float, high: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a window whose sides are ``low``-``high`` of the region's."""
    wh = max(1, int(round(h * rng.uniform(low, high))))
    ww = max(1, int(round(w * rng.uniform(low, high))))
    return int(rng.integers(h - wh + 1)), int(rng.integers(w - ww + 1)), wh, ww


class Corruptions:
    """Models Genesis' transformations and masked blocks on a 2D region (float32 in [0, 1]), drawing from the
    sample's own generator."""

    def __init__(self, nonlinear_prob=0.9, shuffle_prob=0.5, paint_prob=0.9, outpaint_share=0.8, mask_ratio=0.0,
                 mask_patch=8):
        for name, v in (("nonlinear-prob", nonlinear_prob), ("shuffle-prob", shuffle_prob), ("paint-prob", paint_prob),
                        ("outpaint-share", outpaint_share)):
            if not 0 <= v <= 1:
                raise ValueError(f"--{name} must be in [0, 1], got {v}")
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"--mask-ratio must be in [0, 1), got {mask_ratio}")
        if mask_patch < 1:
            raise ValueError(f"--mask-patch must be >= 1 pixel, got {mask_patch}")
        self.nonlinear_prob, self.shuffle_prob, self.paint_prob = nonlinear_prob, shuffle_prob, paint_prob
        self.outpaint_share, self.mask_ratio, self.mask_patch = outpaint_share, mask_ratio, mask_patch

    def nonlinear(self, x, rng):
        xs, ys = bezier_curve(rng)
        if rng.random() < 0.5:
            ys = ys[::-1]  # an inverted curve: bright becomes dark
        return np.interp(x, xs, ys).astype(np.float32)

    def shuffle(self, x, rng, windows: int = 50):
        x = x.copy()
        h, w = x.shape
        for _ in range(windows):
            t, l, wh, ww = random_window(rng, h, w, 0.02, 0.1)
            block = x[t:t + wh, l:l + ww]
            x[t:t + wh, l:l + ww] = rng.permutation(block.reshape(-1)).reshape(block.shape)
        return x

    def paint(self, x, rng):
        h, w = x.shape
        if rng.random() < self.outpaint_share:  # keep a few windows, noise elsewhere
            out = rng.random(x.shape, dtype=np.float32)
            for _ in range(int(rng.integers(1, 4))):
                t, l, wh, ww = random_window(rng, h, w, 0.3, 0.6)
                out[t:t + wh, l:l + ww] = x[t:t + wh, l:l + ww]
            return out
        x = x.copy()
        for _ in range(int(rng.integers(1, 6))):  # in-painting: a few windows of noise
            t, l, wh, ww = random_window(rng, h, w, 0.1, 0.3)
            x[t:t + wh, l:l + ww] = rng.random((wh, ww), dtype=np.float32)
        return x

    def mask(self, x, rng):
        x = x.copy()
        p = self.mask_patch
        rows, cols = -(-x.shape[0] // p), -(-x.shape[1] // p)
        hidden = rng.random((rows, cols)) < self.mask_ratio
        for r, c in zip(*np.nonzero(hidden)):
            x[r * p:(r + 1) * p, c * p:(c + 1) * p] = 0
        return x

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draws = rng.random(3)  # drawn whatever is switched on: the same stream for every setting
        if draws[0] < self.nonlinear_prob:
            x = self.nonlinear(x, rng)
        if draws[1] < self.shuffle_prob:
            x = self.shuffle(x, rng)
        if draws[2] < self.paint_prob:
            x = self.paint(x, rng)
        if self.mask_ratio > 0:
            x = self.mask(x, rng)
        return x


class RestoreViews:
    """(padded slice HxW, content box, the sample's generator) -> (corrupted (1, H, W), original (1, H, W),
    content mask (1, H, W)), float32; only the scanned content is corrupted and scored."""

    def __init__(self, corruptions: Corruptions):
        self.corruptions = corruptions

    def __call__(self, img: np.ndarray, box, rng: np.random.Generator):
        img = np.asarray(img, dtype=np.float32)
        top, left, h, w = (int(v) for v in box)
        corrupted = img.copy()
        corrupted[top:top + h, left:left + w] = self.corruptions(np.clip(content(img, box), 0, 1), rng)
        weight = np.zeros_like(img)
        weight[top:top + h, left:left + w] = 1
        return tuple(torch.from_numpy(np.ascontiguousarray(a))[None] for a in (corrupted, img, weight))


class RestoreModel(nn.Module):
    """A segmenter with one output channel restores the slice: (corrupted, original, mask), each (B, 1, H, W)
    -> sigmoid(segmenter(corrupted)) -> masked MSE against the original, and the share of the corrupted
    input's error it removes. ``.encoder`` is the segmenter's encoder."""

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.segmenter = segmenter

    @property
    def encoder(self):
        return self.segmenter.encoder

    def forward(self, batch) -> dict:
        x, y, w = batch
        restored = torch.sigmoid(self.segmenter(x).float())
        n = w.sum().clamp(min=1)
        loss = ((restored - y) ** 2 * w).sum() / n
        baseline = ((x.float() - y) ** 2 * w).sum() / n
        return {"loss": loss, "accuracy": 1 - loss.detach() / baseline.clamp(min=1e-8)}

    def preview(self, batch) -> torch.Tensor:
        """Corrupted and original slices of the first 8 samples, interleaved: (16, 1, H, W) (no forward pass)."""
        x, y, _ = batch
        return torch.stack([x[:8], y[:8]], 1).flatten(0, 1).clamp(0, 1)


@TASKS.register
class Restore(PretextTask):
    name = "restore"
    paper = "Zhou et al. 2019/2021 (Models Genesis), arXiv:2004.07882; masked blocks: Tian et al. 2023, arXiv:2301.03580"
    summary = "restore corrupted slices with a whole U-Net or TransUNet (writes network.pt too)"
    per_arch = True  # a network.pt moves into one architecture only: one pretraining run per architecture
    metric = "error removed: 1 - MSE(restored) / MSE(corrupted input)"

    @staticmethod
    def add_args(g) -> None:
        g.add_argument("--arch", choices=models.ARCHS.names(), default="unet", help="the segmenter that learns to restore")
        g.add_argument("--nonlinear-prob", type=float, default=0.9, help="share of slices given a Bezier intensity curve")
        g.add_argument("--shuffle-prob", type=float, default=0.5, help="share given local pixel shuffling")
        g.add_argument("--paint-prob", type=float, default=0.9, help="share given in- or out-painting")
        g.add_argument("--outpaint-share", type=float, default=0.8, help="share of the paintings that are out-paintings")
        g.add_argument("--mask-ratio", type=float, default=0.0, help="share of --mask-patch blocks set to 0 (0: none)")
        g.add_argument("--mask-patch", type=int, default=8, help="side of a masked block in pixels")

    @staticmethod
    def encoder_kwargs(args) -> dict:
        return {"max_reduction": 16} if args.arch == "transunet" else {}

    def __init__(self, args, encoder):
        self.corruptions = Corruptions(args.nonlinear_prob, args.shuffle_prob, args.paint_prob, args.outpaint_share,
                                       args.mask_ratio, args.mask_patch)
        self.views = RestoreViews(self.corruptions)
        self.segmenter_kwargs = {"img_size": list(args.size)} if args.arch == "transunet" else {}
        self.model = RestoreModel(models.create_segmenter(args.arch, encoder, 1, **self.segmenter_kwargs))
        self.chance = 0.0

    def network(self):
        return self.model.segmenter, self.segmenter_kwargs

    def encoder_meta(self) -> dict:
        return {"restore_arch": self.model.segmenter.arch}

