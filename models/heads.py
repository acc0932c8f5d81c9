"""Pretext heads that sit on an encoder's pooled deepest feature, and the jigsaw permutation set."""
import functools
import itertools
import math

import numpy as np
import torch
from lightly.models.modules import SimCLRProjectionHead
from torch import nn


def pooled_features(encoder, x):
    """Global average pool of the deepest feature: (B, in_chans, H, W) -> (B, encoder.channels[-1])."""
    return encoder(x)[-1].mean(dim=(2, 3))


class RotationHead(nn.Module):
    """Rotation prediction (Gidaris et al. 2018, arXiv:1803.07728): linear layer, (B, C) -> logits (B, 4)."""

    def __init__(self, in_features, num_classes=4):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.fc(x)


class JigsawHead(nn.Module):
    """Jigsaw puzzle classifier (Noroozi & Favaro 2016, arXiv:1603.09246).

    Tile features (B, num_tiles, C), each from the same encoder -> shared fc + ReLU per tile
    (B, num_tiles, hidden) -> concatenated (B, num_tiles * hidden) -> fc + ReLU -> fc ->
    logits (B, num_permutations) over the permutation set of `jigsaw_permutations`.
    """

    def __init__(self, in_features, num_tiles=9, num_permutations=100, hidden=256):
        super().__init__()
        self.num_tiles = num_tiles
        self.tile_fc = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(num_tiles * hidden, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, num_permutations))

    def forward(self, tiles):
        if tiles.ndim != 3 or tiles.shape[1] != self.num_tiles:
            raise ValueError(f"tile features of shape {tuple(tiles.shape)}: expected (B, {self.num_tiles}, C)")
        return self.classifier(self.tile_fc(tiles).flatten(1))


def simclr_projection_head(in_features, hidden=512, out=128):
    """SimCLR projection MLP (Chen et al. 2020, arXiv:2002.05709), lightly's: (B, in) -> (B, out)."""
    return SimCLRProjectionHead(input_dim=in_features, hidden_dim=hidden, output_dim=out)


_POOL = 100_000  # candidates sampled when num_tiles! is too large to enumerate (num_tiles > 9)


@functools.lru_cache(maxsize=2)
def _all_permutations(num_tiles):
    return np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)


@functools.lru_cache(maxsize=8)
def _max_hamming_set(num_permutations, num_tiles, seed):
    rng = np.random.default_rng(seed)
    if num_tiles <= 9:  # 9! = 362880 candidates
        pool = _all_permutations(num_tiles)
    else:
        pool = np.unique(rng.permuted(np.tile(np.arange(num_tiles, dtype=np.int8), (_POOL, 1)), axis=1), axis=0)
    pool = pool[rng.permutation(len(pool))]  # seeded tie-breaking
    columns = np.ascontiguousarray(pool.T)

    def hamming(perm):  # distance of every candidate to `perm`, column by column (fast in numpy)
        return sum((col != p).astype(np.uint8) for col, p in zip(columns, perm))

    chosen = [0]
    dist = hamming(pool[0])  # minimum Hamming distance of every candidate to the chosen set
    for _ in range(num_permutations - 1):
        j = int(dist.argmax())
        chosen.append(j)
        dist = np.minimum(dist, hamming(pool[j]))
    return pool[chosen].astype(np.int64)


def jigsaw_permutations(num_permutations=100, num_tiles=9, seed=0):
    """Permutation set of the jigsaw task: LongTensor (num_permutations, num_tiles).

    Greedy maximal Hamming distance (Noroozi & Favaro 2016): start from a random permutation and
    repeatedly add the candidate whose minimum Hamming distance to the chosen ones is largest.
    Candidates are all num_tiles! permutations (a seeded sample of 100k above 9 tiles).
    Deterministic for given arguments; cached.
    """
    if num_tiles < 2:
        raise ValueError(f"num_tiles={num_tiles!r}: expected >= 2")
    limit = math.factorial(num_tiles) if num_tiles <= 9 else _POOL // 2
    if not 1 <= num_permutations <= limit:
        raise ValueError(f"num_permutations={num_permutations!r}: expected 1..{limit} for {num_tiles} tiles")
    return torch.from_numpy(_max_hamming_set(num_permutations, num_tiles, seed).copy())
