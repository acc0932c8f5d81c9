"""TensorBoard embedding projector: pooled features of fixed test slices from each encoder.

    tensorboard --logdir runs/<name>     # PROJECTOR tab: one embedding per init
"""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import models
import scans

from .config import BASE_INITS
from .grid import init_file


def encoders_of(cfg: dict) -> dict:
    """init name -> encoder with that init's weights (random: seeded fresh encoder; a pretrained init: its first
    pretraining seed's encoder, of the first architecture for a whole-network task)."""
    out = {}
    for init in cfg["inits"]:
        if init == "random":
            torch.manual_seed(0)
            out[init] = models.create_encoder(cfg["encoder"], in_chans=1)
        elif init == "imagenet":
            out[init] = models.create_encoder(cfg["encoder"], in_chans=1, pretrained_file=cfg["imagenet_weights"])
        elif init not in BASE_INITS:
            first = init_file(cfg, init, cfg["archs"][0], cfg["pretrain"]["budgets"][0], cfg["pretrain"]["seeds"][0])[0]
            path = Path(first).with_name("encoder.pt")
            if path.is_file():
                out[init] = models.encoder_from_checkpoint(path)[0]
    return out


def test_slices(cfg: dict, n: int):
    """``n`` evenly spaced test slices (1, 48, 64) with "case:slice" names and foreground flags."""
    splits = scans.load_splits(Path(cfg["runs_dir"]) / "splits.json")
    test = set(splits["test"])
    norm = scans.normalization_of(SimpleNamespace(norm=cfg["norm"], window=cfg["window"]))  # as the runs normalised
    loaded = scans.load_cases([c for c in scans.find_cases(cfg["data"]) if c.case_id in test], norm)
    stack = scans.SliceStack(loaded, with_labels=True)
    pick = np.linspace(0, len(stack) - 1, min(n, len(stack))).round().astype(int)
    names = [f"{stack.case_ids[stack.case_index[i]]}:{i}" for i in pick]
    fg = [int(stack.labels[i].max()) for i in pick]
    return torch.from_numpy(stack.images[pick])[:, None], names, fg


@torch.no_grad()
def write_embeddings(cfg: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    x, names, fg = test_slices(cfg, int(cfg["embeddings"]["slices"]))
    folder = Path(cfg["runs_dir"]) / "embeddings"
    shutil.rmtree(folder, ignore_errors=True)  # rewritten whole each time: same encoders, same bytes
    writer = SummaryWriter(str(folder))
    meta = [[n, str(f)] for n, f in zip(names, fg)]
    for init, enc in encoders_of(cfg).items():
        feats = models.pooled_features(enc.eval(), x)
        writer.add_embedding(feats, metadata=meta, metadata_header=["slice", "max_label"], label_img=x, tag=f"encoder/{init}")
    writer.close()
