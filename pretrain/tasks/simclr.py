"""SimCLR (Chen, Kornblith, Norouzi and Hinton 2020, arXiv:2002.05709) for 1-channel scans.

Views are made on the training device, for the whole batch at once (:func:`make_views`): a
random resized crop inside the scanned content, flips and a small rotation in one sampling
grid (flips only along the slice axes the dataset allows, ``--flip-axes``: two views that differ
by a flip along an axis whose direction defines a class, such as the anterior-posterior axis of
the hippocampus head and body, would teach the encoder to ignore that very direction), then
gamma, brightness/contrast, Gaussian blur and noise, all in float32 (no 8-bit round trip, no
3-channel ImageNet normalisation as lightly's default ``SimCLRTransform`` would do).
The DataLoader hands over slices, their content boxes and each sample's random draws (``DRAWS``
uniform numbers per view and a noise field of the view's size, from the sample's own generator),
so the views of a sample depend only on (seed, epoch, sample index), whatever the number of
workers or processes; the data pipeline still costs almost nothing next to the step, on a CPU as
on a GPU.

Model: encoder -> pooled (B, C) -> lightly's ``SimCLRProjectionHead`` -> (B, D); loss:
lightly's ``NTXentLoss``, negatives gathered across processes under DDP. The logged accuracy
is how often an embedding's most similar other embedding among the 2B of the batch is its
positive (chance 1 / (2B - 1)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from torch import nn

import scans
from models import pooled_features, simclr_projection_head

from ..registry import TASKS, PretextTask


@dataclass(frozen=True)
class ViewConfig:
    """Strength of the SimCLR augmentations (probabilities and ranges)."""

    size: tuple[int, int] = (40, 56)
    flips: tuple[int, ...] = (0, 1)  # slice axes that may be flipped (0: rows, 1: columns)
    min_scale: float = 0.3          # smallest crop area / content area
    ratio: tuple[float, float] = (0.6, 1.6)
    max_rotation: float = 20.0      # degrees
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.8
    brightness: float = 0.3
    contrast: float = 0.3
    p_color: float = 0.8
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    p_blur: float = 0.3
    noise_std: tuple[float, float] = (0.01, 0.06)
    p_noise: float = 0.3


# The uniform draws of one view, by position in a sample's (DRAWS,) row.
AREA, RATIO, CX, CY, FLIP_X, FLIP_Y, ANGLE, GAMMA_ON, GAMMA, COLOR_ON, CONTRAST, BRIGHT, BLUR_ON, SIGMA, NOISE_ON, NOISE = range(16)
DRAWS = 16


class SimCLRSample:
    """Dataset transform: (padded slice HxW, content box, the sample's generator) -> (slice (1, H, W),
    box (4,), draws (2, DRAWS) uniform in [0, 1), noise (2, 1, h, w) standard normal), the two views'
    random numbers; ``view_size`` = (h, w)."""

    def __init__(self, view_size=(40, 56)):
        self.view_size = tuple(view_size)

    def __call__(self, img: np.ndarray, box, rng: np.random.Generator):
        return (torch.from_numpy(np.array(img, dtype=np.float32))[None], torch.as_tensor(np.asarray(box), dtype=torch.float32),
                torch.from_numpy(rng.random((2, DRAWS), dtype=np.float32)),
                torch.from_numpy(rng.standard_normal((2, 1, *self.view_size), dtype=np.float32)))


def _uniform(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return u * (hi - lo) + lo


def crop_flip_rotate(x: torch.Tensor, boxes: torch.Tensor, cfg: ViewConfig, u: torch.Tensor) -> torch.Tensor:
    """Random resized crop inside each content box, flips and rotation: (B,1,H,W) -> (B,1,*size);
    ``u`` (B, DRAWS) are the views' uniform draws."""
    b, _, h_in, w_in = x.shape
    dev = x.device
    top, left, bh, bw = boxes.unbind(1)
    area = bh * bw * _uniform(u[:, AREA], cfg.min_scale, 1.0)
    ratio = torch.exp(_uniform(u[:, RATIO], math.log(cfg.ratio[0]), math.log(cfg.ratio[1])))
    cw = torch.minimum(torch.sqrt(area * ratio), bw)
    ch = torch.minimum(torch.sqrt(area / ratio), bh)
    cx = left + cw / 2 + u[:, CX] * (bw - cw)
    cy = top + ch / 2 + u[:, CY] * (bh - ch)
    flip_x = torch.where((u[:, FLIP_X] < 0.5) & (1 in cfg.flips), -1.0, 1.0)  # drawn either way: the same
    flip_y = torch.where((u[:, FLIP_Y] < 0.5) & (0 in cfg.flips), -1.0, 1.0)  # draws whatever is allowed
    angle = _uniform(u[:, ANGLE], -cfg.max_rotation, cfg.max_rotation) * math.pi / 180
    oh, ow = cfg.size
    v, u = torch.meshgrid(torch.linspace(-1, 1, oh, device=dev), torch.linspace(-1, 1, ow, device=dev), indexing="ij")
    dx = u[None] * (cw * flip_x / 2)[:, None, None]
    dy = v[None] * (ch * flip_y / 2)[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    px = (cx[:, None, None] + cos * dx - sin * dy).clamp(left[:, None, None], (left + bw - 1)[:, None, None])
    py = (cy[:, None, None] + sin * dx + cos * dy).clamp(top[:, None, None], (top + bh - 1)[:, None, None])
    grid = torch.stack([(2 * px + 1) / w_in - 1, (2 * py + 1) / h_in - 1], dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur, ``sigma`` (B,), as one grouped convolution."""
    b, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k1 = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :])[:, None]  # (B, 1, k, k)
    out = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="replicate"), k2.repeat_interleave(c, 0), groups=b * c)
    return out.reshape(b, c, h, w)


def make_views(x: torch.Tensor, boxes: torch.Tensor, cfg: ViewConfig, u: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One view of each slice, from the samples' own draws: x (B, 1, H, W) in [0, 1], boxes (B, 4),
    u (B, DRAWS) uniform in [0, 1), noise (B, 1, *cfg.size) standard normal -> (B, 1, *cfg.size)."""
    v = crop_flip_rotate(x, boxes, cfg, u)
    one = lambda t: t[:, None, None, None]  # noqa: E731
    gamma = torch.where(u[:, GAMMA_ON] < cfg.p_gamma, torch.exp(_uniform(u[:, GAMMA], *map(math.log, cfg.gamma))), 1.0)
    v = v.clamp(min=0) ** one(gamma)
    color = u[:, COLOR_ON] < cfg.p_color
    contrast = torch.where(color, _uniform(u[:, CONTRAST], 1 - cfg.contrast, 1 + cfg.contrast), 1.0)
    bright = torch.where(color, _uniform(u[:, BRIGHT], -cfg.brightness, cfg.brightness), 0.0)
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    v = (v - mean) * one(contrast) + mean + one(bright)
    blur = u[:, BLUR_ON] < cfg.p_blur
    if blur.any():
        v = torch.where(one(blur), gaussian_blur(v, _uniform(u[:, SIGMA], *cfg.blur_sigma)), v)
    std = torch.where(u[:, NOISE_ON] < cfg.p_noise, _uniform(u[:, NOISE], *cfg.noise_std), 0.0)
    return v + noise.to(v.dtype) * one(std)


def positive_accuracy(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Fraction of the 2B embeddings whose most similar other embedding is their positive."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-float("inf"))
    n = len(z0)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return (sim.argmax(1) == target).float().mean()


class SimCLRModel(nn.Module):
    """Encoder + projection head + NT-Xent.

    Input: (slices (B, 1, H, W), boxes (B, 4), draws (B, 2, DRAWS), noise (B, 2, 1, h, w)), as
    :class:`SimCLRSample` makes them -> two views made on the device -> loss, accuracy. Views are
    drawn from nothing but the batch, so a preview draws no random number.
    """

    def __init__(self, encoder: nn.Module, temperature: float = 0.2, proj_dim: int = 128, gather: bool = False,
                 views: ViewConfig = ViewConfig()):
        super().__init__()
        self.encoder = encoder
        c = encoder.channels[-1]
        self.head = simclr_projection_head(c, hidden=max(c, 128), out=proj_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather)
        self.views = views

    def two_views(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, boxes, u, noise = batch
        with torch.no_grad():
            return tuple(make_views(x, boxes, self.views, u[:, k], noise[:, k]) for k in (0, 1))

    def loss_on_views(self, x0: torch.Tensor, x1: torch.Tensor) -> dict:
        z0, z1 = self.head(pooled_features(self.encoder, torch.cat([x0, x1]))).chunk(2)
        return {"loss": self.criterion(z0, z1), "accuracy": positive_accuracy(z0.detach().float(), z1.detach().float())}

    def forward(self, batch) -> dict:
        return self.loss_on_views(*self.two_views(batch))

    def preview(self, batch) -> torch.Tensor:
        """View pairs of the first 8 slices, interleaved: (16, 1, h, w)."""
        x0, x1 = self.two_views(tuple(t[:8] for t in batch))
        return torch.stack([x0, x1], 1).flatten(0, 1).clamp(0, 1)


@TASKS.register
class SimCLR(PretextTask):
    name = "simclr"
    paper = "Chen et al. 2020, arXiv:2002.05709"
    summary = "contrast two augmented views of each slice against the batch (NT-Xent, lightly)"

    @staticmethod
    def add_args(g) -> None:
        g.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature")
        g.add_argument("--proj-dim", type=int, default=128, help="projection head output size")
        g.add_argument("--view-size", type=int, nargs=2, default=[40, 56], help="view size H W")
        g.add_argument("--min-scale", type=float, default=0.3, help="smallest area fraction of the random resized crop")
        g.add_argument("--flip-axes", nargs="+", default=["auto"], metavar="AXIS", help="views: " + scans.FLIP_AXES_HELP)

    def __init__(self, args, encoder):
        gather = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        flips = scans.slice_flips(scans.resolve_flip_axes(args.flip_axes, args.data), args.axis)
        cfg = ViewConfig(size=tuple(args.view_size), min_scale=args.min_scale, flips=flips)
        self.views = SimCLRSample(cfg.size)
        self.model = SimCLRModel(encoder, args.temperature, args.proj_dim, gather=gather, views=cfg)
        self.chance = 1.0 / (2 * args.batch_size - 1)
