"""A cheap check of what an encoder learned: a k-NN probe on a slice task derived from the labels.

Task: which of the foreground classes a 2D slice shows, as a class of its own for each
combination (for two classes: neither, 1 only, 2 only, both; chance 1 / number of combinations
present). Features: the encoder's pooled deepest feature, L2-normalised, with the BatchNorm
statistics re-estimated on the reference slices first (AdaBN, Li et al. 2016): an encoder's
running statistics come from its pretext views (crops, tiles), not from whole slices, and every
encoder, random or pretrained, is probed on the same footing. Reference and query
slices come from disjoint halves of the subjects of the training pool (never the test set), so
a volume's neighbouring slices cannot answer for it. Score: balanced accuracy (mean recall over
the classes present) of a weighted 20-nearest-neighbour vote, as DINO's k-NN monitor (Caron et
al. 2021: cosine similarity, weights exp(similarity / 0.07)).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

import models
import scans

MAX_SLICES = 1500  # per side; a fixed, evenly spaced subset keeps the probe to a few seconds on a CPU


def slice_classes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, H, W) integer labels -> (N,) code of the set of foreground classes present (bit c-1 for class c)."""
    code = np.zeros(len(labels), dtype=np.int64)
    flat = labels.reshape(len(labels), -1)
    for c in range(1, num_classes):
        code |= (flat == c).any(1).astype(np.int64) << (c - 1)
    return code


def probe_sets(loaded: list[scans.LoadedCase], subject_of: dict[str, str], size, axis: int):
    """(reference, query) sets of (images (N, 1, H, W) float32, classes (N,)) from disjoint subjects."""
    subjects = sorted({subject_of.get(c.case_id, c.case_id) for c in loaded})
    half = {s: i % 2 for i, s in enumerate(subjects)}
    num_classes = max(int(c.label.max()) for c in loaded) + 1
    out = []
    for side in (0, 1):
        cases = [c for c in loaded if half[subject_of.get(c.case_id, c.case_id)] == side]
        stack = scans.SliceStack(cases, size, axis, with_labels=True)
        pick = np.linspace(0, len(stack) - 1, min(MAX_SLICES, len(stack))).round().astype(int)
        out.append((torch.from_numpy(stack.images[pick])[:, None], torch.from_numpy(slice_classes(stack.labels[pick], num_classes))))
    return out


@torch.no_grad()
def adapted_copy(encoder, x: torch.Tensor, device, batch_size: int = 256):
    """A copy of ``encoder`` in eval mode whose BatchNorm statistics are the averages over ``x``."""
    enc = copy.deepcopy(encoder).to(device)
    for m in enc.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    enc.train()
    for b in x.split(batch_size):
        enc(b.to(device))
    return enc.eval()


@torch.no_grad()
def features(encoder, x: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    f = torch.cat([models.pooled_features(encoder, b.to(device)).float().cpu() for b in x.split(batch_size)])
    return F.normalize(f, dim=1)


@torch.no_grad()
def knn_accuracy(encoder, reference, query, device="cpu", k: int = 20, temperature: float = 0.07) -> float:
    """Balanced accuracy of a weighted k-NN vote (see the module docstring). ``encoder`` is not changed."""
    (xr, yr), (xq, yq) = reference, query
    enc = adapted_copy(encoder, xr, device)
    fr, fq = features(enc, xr, device), features(enc, xq, device)
    classes = torch.unique(torch.cat([yr, yq]))
    sim, idx = (fq @ fr.T).topk(min(k, len(fr)), dim=1)
    votes = torch.zeros(len(fq), int(classes.max()) + 1).scatter_add_(1, yr[idx], (sim / temperature).exp())
    pred = votes.argmax(1)
    recalls = [(pred[yq == c] == c).float().mean().item() for c in classes if (yq == c).any()]
    return float(np.mean(recalls))


def slice_class_name(code: int) -> str:
    """The probe class of a slice in words: which foreground classes it shows."""
    present = [str(c + 1) for c in range(code.bit_length()) if code >> c & 1]
    return "classes " + "+".join(present) if present else "background only"


@torch.no_grad()
def write_embedding(writer, encoder, probe, device, step: int, n: int = 256) -> None:
    """TensorBoard PROJECTOR: the probe's features (after AdaBN) of ``n`` query slices, each
    labelled with its slice class, with the slices as sprites."""
    (xr, _), (xq, yq) = probe
    enc = adapted_copy(encoder, xr, device)
    pick = torch.from_numpy(np.linspace(0, len(xq) - 1, min(n, len(xq))).round().astype(np.int64))
    feats = features(enc, xq[pick], device)
    writer.add_embedding(feats, metadata=[slice_class_name(int(c)) for c in yq[pick]],
                         label_img=xq[pick].clamp(0, 1), global_step=step, tag="encoder")
