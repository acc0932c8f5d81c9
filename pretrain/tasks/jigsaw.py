"""Jigsaw puzzles (Noroozi and Favaro 2016, arXiv:1603.09246).

Views: a square region inside the scanned content is cut into a 3x3 grid. From each cell a
tile smaller than the cell is taken at a random offset, such that neighbouring tiles are at
least ``min_gap`` pixels apart (so edges never continue across tiles) and jittered within what
is left; each tile is resized to ``tile x tile`` pixels (hippocampus slices give cells of only
~11 px; an encoder with stride 16 needs larger inputs) and normalised on its own (no
brightness cue). The tiles are shuffled by one permutation of a
fixed set chosen by maximal Hamming distance; the model predicts its index.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import JigsawHead, jigsaw_permutations, pooled_features

from ..registry import TASKS, PretextTask
from ..views import accuracy, content, random_square, resize

GRID = 3


def tile_layout(cell: int, tile_fraction: float, min_gap: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """Tile side ``t`` and per-cell offsets (GRID, GRID, 2) within cells of side ``cell``.

    Offsets lie in ``[ceil(g/2), cell - t - floor(g/2)]``, so the tiles of neighbouring cells
    are at least ``g = min_gap`` pixels apart; the tile shrinks if the cell leaves no room.
    """
    lo, hi_margin = -(-min_gap // 2), min_gap // 2
    t = min(max(2, int(round(cell * tile_fraction))), cell - lo - hi_margin)
    if t < 2:
        raise ValueError(f"grid cells of {cell} px leave no room for tiles {min_gap} px apart; use a larger region")
    return t, rng.integers(lo, cell - t - hi_margin + 1, size=(GRID, GRID, 2))


class JigsawViews:
    """(padded slice HxW, content box, the sample's generator) -> (tiles float32 (9, 1, T, T), permutation index)."""

    def __init__(self, permutations: torch.Tensor, tile: int = 32, tile_fraction: float = 0.75, min_gap: int = 2):
        if not 0.3 <= tile_fraction <= 1.0:
            raise ValueError(f"tile fraction must be in [0.3, 1], got {tile_fraction}")
        if min_gap < 1:
            raise ValueError(f"min_gap must be >= 1 pixel (touching tiles give the answer away), got {min_gap}")
        self.perms = permutations.numpy()
        self.tile, self.tile_fraction, self.min_gap = tile, tile_fraction, min_gap

    def __call__(self, img: np.ndarray, box, rng: np.random.Generator):
        region = random_square(content(img, box), rng)
        cell = region.shape[0] // GRID
        t, offsets = tile_layout(cell, self.tile_fraction, self.min_gap, rng)
        tiles = []
        for r in range(GRID):
            for c in range(GRID):
                dy, dx = offsets[r, c]
                patch = resize(region[r * cell + dy : r * cell + dy + t, c * cell + dx : c * cell + dx + t], (self.tile, self.tile))
                tiles.append((patch - patch.mean()) / (patch.std() + 1e-5))
        label = int(rng.integers(len(self.perms)))
        shuffled = np.stack([tiles[i] for i in self.perms[label]])
        return torch.from_numpy(shuffled)[:, None], label


class JigsawModel(nn.Module):
    """Encoder shared across tiles + MLP. Input (B, 9, 1, T, T) -> tile features (B, 9, C) -> logits (B, P)."""

    def __init__(self, encoder: nn.Module, permutations: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("permutations", permutations.clone(), persistent=True)
        self.head = JigsawHead(encoder.channels[-1], permutations.shape[1], len(permutations))

    def forward(self, batch) -> dict:
        tiles, target = batch
        b, n = tiles.shape[:2]
        feats = pooled_features(self.encoder, tiles.flatten(0, 1)).view(b, n, -1)
        logits = self.head(feats)
        return {"loss": F.cross_entropy(logits, target), "accuracy": accuracy(logits.detach(), target)}

    def preview(self, batch) -> torch.Tensor:
        """The shuffled tiles of the first 2 puzzles: (18, 1, T, T), rescaled to [0, 1]."""
        t = batch[0][:2].flatten(0, 1)
        lo, hi = t.amin(dim=(1, 2, 3), keepdim=True), t.amax(dim=(1, 2, 3), keepdim=True)
        return (t - lo) / (hi - lo + 1e-5)


@TASKS.register
class Jigsaw(PretextTask):
    name = "jigsaw"
    paper = "Noroozi and Favaro 2016, arXiv:1603.09246"
    summary = "solve a shuffled 3x3 puzzle of separated tiles: predict the permutation's index"

    @staticmethod
    def add_args(g) -> None:
        g.add_argument("--tile", type=int, default=32, help="tile side after resizing")
        g.add_argument("--tile-fraction", type=float, default=0.75, help="tile side / grid cell side (rest: gap and jitter)")
        g.add_argument("--min-gap", type=int, default=2, help="least distance in pixels between neighbouring tiles")
        g.add_argument("--num-permutations", type=int, default=100, help="size of the permutation set")

    def __init__(self, args, encoder):
        self.permutations = jigsaw_permutations(args.num_permutations, GRID * GRID, seed=0)
        self.views = JigsawViews(self.permutations, args.tile, args.tile_fraction, args.min_gap)
        self.model = JigsawModel(encoder, self.permutations)
        self.chance = 1.0 / len(self.permutations)

    def encoder_meta(self) -> dict:
        return {"permutations": self.permutations.tolist()}
