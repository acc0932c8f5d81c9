"""``RUN_DIR/model.pt``: a fine-tuned segmenter with everything needed to apply it to new scans.

Written once at the end of fine-tuning (atomically, before ``metrics.json``); read by
``finetune.predict`` and ``finetune.export``. Plain tensors and values only, so it loads with
``weights_only=True``: format, arch, encoder name and constructor arguments, number of classes,
class names, how the run's evaluation applied the network (``inference``: slice axis, training
size, in-plane spacing, intensity normalisation, label-safe flips, TTA, AMP, batch and memory
budget; ``finetune.inference.Inference``) and the segmenter's state_dict. ``finetune.predict``
applies the test-time options unless told otherwise, so its output for a test case is the
segmentation that was scored.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

import engine
import models
from atomicio import atomic_path

from .inference import Inference

FORMAT = "finetune.model/2"
LEGACY = "finetune.model/1"  # before the inference options were one record (no tta / amp)
MODEL = "model.pt"


def save_model(run_dir, model: torch.nn.Module, *, arch: str, encoder: str, encoder_kwargs: dict, num_classes: int,
               class_names: dict | None, inference: Inference) -> Path:
    """Write ``RUN_DIR/model.pt``; returns its path."""
    path = Path(run_dir) / MODEL
    payload = {"format": FORMAT, "arch": arch, "encoder": encoder, "encoder_kwargs": dict(encoder_kwargs),
               "num_classes": int(num_classes), "class_names": class_names, "inference": inference.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(run_dir, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The segmenter of a finished fine-tuning run, in eval mode on ``device`` (channels_last, as
    in training), and the rest of ``model.pt`` (without the state_dict; ``inference`` an Inference)."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL
    if not path.is_file():
        why = "the run has not finished" if (run_dir / "config.json").is_file() else "it is not a fine-tuning run folder"
        raise FileNotFoundError(f"{path} not found: {why} (python -m finetune writes model.pt when it ends)")
    spec = engine.load_weights(path, "fine-tuned model")
    if not isinstance(spec, dict) or spec.get("format") not in (FORMAT, LEGACY):
        raise ValueError(f"{path} is not a fine-tuned model written by finetune (format {FORMAT!r})")
    if spec["format"] == LEGACY:
        spec["inference"] = {k: spec[k] for k in ("axis", "size", "normalization", "flip_axes", "spacing")}
    kw = {"img_size": tuple(spec["inference"]["size"])} if spec["arch"] == "transunet" else {}
    model = models.create_segmenter(spec["arch"], spec["encoder"], spec["num_classes"],
                                    encoder_kwargs=spec["encoder_kwargs"], **kw)
    model.load_state_dict(spec.pop("state_dict"))
    model.to(torch.device(device)).to(memory_format=torch.channels_last).eval()
    spec["inference"] = Inference.from_dict(spec["inference"])
    spec["path"] = os.fspath(path)
    return model, spec
