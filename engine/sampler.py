"""The resumable, sharded sampler of a whole run, and the learning-rate schedule."""
from __future__ import annotations

import math

import torch


class ResumableSampler(torch.utils.data.Sampler):
    """``(epoch, index)`` keys of every sample a run draws from step ``start`` to step ``total``, for one
    DataLoader iterator over the whole run (its workers start once, however short the epochs).

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees exactly the
    batches the interrupted run would have seen. Rank ``r`` of ``world`` takes every ``world``-th
    index of the shuffled order; each epoch has ``batches_per_epoch`` full batches per rank (the
    rest is dropped). The dataset derives each sample's random draws from its key
    (``engine.sample_rng``), so they do not depend on which worker or process draws them.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        self.per_rank = n // world
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{n} samples over {world} process(es) give no full batch of {batch_size}: use a smaller batch")
        self.start, self.total = 0, self.batches_per_epoch

    def set_range(self, start: int, total: int) -> "ResumableSampler":
        """Yield the keys of steps ``start`` (0-based) to ``total`` (exclusive)."""
        self.start, self.total = start, total
        return self

    def order(self, epoch: int) -> list[int]:
        """This rank's indices of epoch ``epoch``, in order (full batches only)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        return order[self.rank : self.per_rank * self.world : self.world][: self.batches_per_epoch * self.batch_size]

    def __iter__(self):
        epoch, order = None, []
        for step in range(self.start, self.total):
            e, b = divmod(step, self.batches_per_epoch)
            if e != epoch:
                epoch, order = e, self.order(e)
            yield from ((e, i) for i in order[b * self.batch_size : (b + 1) * self.batch_size])

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.batch_size


def lr_at(step: int, total: int, base_lr: float, warmup: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio * base_lr`` at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
