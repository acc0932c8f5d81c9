"""The resumable, sharded sampler and the learning-rate schedule."""
from __future__ import annotations

import math

import torch


class ResumableSampler(torch.utils.data.Sampler):
    """Epoch-seeded shuffle, sharded across processes, that can start mid-epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees exactly the
    batches the interrupted run would have seen. Rank ``r`` of ``world`` takes every
    ``world``-th index of the shuffled order; each epoch yields ``batches_per_epoch`` full
    batches per rank (the rest is dropped), starting at batch ``start_batch``.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        self.epoch, self.start_batch = 0, 0
        self.per_rank = n // world
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{n} samples over {world} process(es) give no full batch of {batch_size}; lower --batch-size")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        mine = order[self.rank : self.per_rank * self.world : self.world]
        used = self.batches_per_epoch * self.batch_size
        return iter(mine[self.start_batch * self.batch_size : used])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def lr_at(step: int, total: int, base_lr: float, warmup: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio * base_lr`` at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
