"""SimCLR (Chen, Kornblith, Norouzi and Hinton 2020, arXiv:2002.05709) for 1-channel scans.

Views: two independent augmentations of the scanned content of one slice (random resized
crop, flips, small rotation, gamma, brightness/contrast, blur, noise), built with
albumentations on float32 images (no 8-bit round trip, no 3-channel ImageNet normalisation as
lightly's default SimCLRTransform would do). Model: encoder -> pooled (B, C) -> lightly's
SimCLRProjectionHead -> (B, D); loss: lightly's NTXentLoss, negatives gathered across
processes under DDP. The logged accuracy is how often an embedding's nearest neighbour among
the other 2B - 1 embeddings of the batch is its positive (chance 1 / (2B - 1)).
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightly.loss import NTXentLoss  # noqa: E402
from torch import nn  # noqa: E402

from models import pooled_features, simclr_projection_head  # noqa: E402

from .views import content  # noqa: E402


def simclr_augment(size: tuple[int, int], min_scale: float = 0.3) -> A.Compose:
    """Views for MRI/CT slices in [0, 1]. Gamma runs first (it needs non-negative input)."""
    return A.Compose([
        A.RandomGamma(gamma_limit=(70, 150), p=0.8),
        A.RandomResizedCrop(size=tuple(size), scale=(min_scale, 1.0), ratio=(0.6, 1.6)),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(rotate=(-20, 20), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.8),
        A.GaussianBlur(sigma_limit=(0.1, 1.5), p=0.3),
        A.GaussNoise(std_range=(0.01, 0.06), p=0.3),
    ], seed=int(np.random.randint(2**31)))


class SimCLRViews:
    """(padded slice HxW, content box) -> two float32 views (1, H, W) each."""

    def __init__(self, size=(40, 56), min_scale: float = 0.3):
        self.aug = simclr_augment(tuple(size), min_scale)

    def reseed(self, seed: int) -> None:
        """Give each DataLoader worker its own augmentation stream (called by ``worker_init``)."""
        self.aug.set_random_seed(seed)

    def __call__(self, img: np.ndarray, box):
        region = np.ascontiguousarray(content(img, box))
        a, b = (torch.from_numpy(np.ascontiguousarray(self.aug(image=region)["image"], dtype=np.float32))[None] for _ in range(2))
        return a, b


def positive_accuracy(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Fraction of the 2B embeddings whose most similar other embedding is their positive."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-float("inf"))
    n = len(z0)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return (sim.argmax(1) == target).float().mean()


class SimCLRModel(nn.Module):
    """Encoder + projection head + NT-Xent. Input two views (B, 1, H, W) -> loss, accuracy."""

    def __init__(self, encoder: nn.Module, temperature: float = 0.2, proj_dim: int = 128, gather: bool = False):
        super().__init__()
        self.encoder = encoder
        c = encoder.channels[-1]
        self.head = simclr_projection_head(c, hidden=max(c, 128), out=proj_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather)

    def forward(self, batch) -> dict:
        x0, x1 = batch
        z = self.head(pooled_features(self.encoder, torch.cat([x0, x1])))
        z0, z1 = z.chunk(2)
        return {"loss": self.criterion(z0, z1), "accuracy": positive_accuracy(z0.detach().float(), z1.detach().float())}

    def preview(self, batch) -> torch.Tensor:
        """View pairs of the first 8 slices, interleaved: (16, 1, H, W)."""
        x0, x1 = batch
        return torch.stack([x0[:8], x1[:8]], 1).flatten(0, 1).clamp(0, 1)


def build(args, encoder):
    import torch.distributed as dist
    gather = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    model = SimCLRModel(encoder, args.temperature, args.proj_dim, gather=gather)
    return SimCLRViews(tuple(args.view_size), args.min_scale), model, {"chance": 1.0 / (2 * args.batch_size - 1)}
