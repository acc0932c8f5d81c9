"""``RUN_DIR/model.pt``: a fine-tuned segmenter with everything needed to apply it to new scans.

Written once at the end of fine-tuning (atomically, before ``metrics.json``); read by
``finetune.predict`` and ``finetune.export``. Plain tensors and values only, so it loads with
``weights_only=True``: format, arch, encoder name and constructor arguments, number of classes,
class names, the slice axis and training size, the in-plane spacing it was trained at (or None),
the intensity normalisation, the label-safe flip axes (volume axes), the test-time options the
run's evaluation used (``tta``: average in those flips; ``amp``: mixed precision), and the
segmenter's state_dict. ``finetune.predict`` applies the test-time options unless told otherwise,
so its output for a test case is the segmentation that was scored.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

import engine
import models
import scans
from atomicio import atomic_path

FORMAT = "finetune.model/1"
MODEL = "model.pt"


def save_model(run_dir, model: torch.nn.Module, *, arch: str, encoder: str, encoder_kwargs: dict, num_classes: int,
               class_names: dict | None, axis: int, size, normalization: scans.Normalization, flip_axes,
               spacing=None, tta: bool = False, amp: bool = False) -> Path:
    """Write ``RUN_DIR/model.pt``; returns its path."""
    path = Path(run_dir) / MODEL
    payload = {"format": FORMAT, "arch": arch, "encoder": encoder, "encoder_kwargs": dict(encoder_kwargs),
               "num_classes": int(num_classes), "class_names": class_names, "axis": int(axis), "size": [int(s) for s in size],
               "normalization": normalization.to_dict(), "flip_axes": [int(a) for a in flip_axes],
               "spacing": [float(v) for v in spacing] if spacing else None, "tta": bool(tta), "amp": bool(amp),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(run_dir, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The segmenter of a finished fine-tuning run, in eval mode on ``device`` (channels_last, as
    in training), and the rest of ``model.pt`` (without the state_dict)."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL
    if not path.is_file():
        why = "the run has not finished" if (run_dir / "config.json").is_file() else "it is not a fine-tuning run folder"
        raise FileNotFoundError(f"{path} not found: {why} (python -m finetune writes model.pt when it ends)")
    spec = engine.load_weights(path, "fine-tuned model")
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fine-tuned model written by finetune (format {FORMAT!r})")
    kw = {"img_size": tuple(spec["size"])} if spec["arch"] == "transunet" else {}
    model = models.create_segmenter(spec["arch"], spec["encoder"], spec["num_classes"],
                                    encoder_kwargs=spec["encoder_kwargs"], **kw)
    model.load_state_dict(spec.pop("state_dict"))
    model.to(torch.device(device)).to(memory_format=torch.channels_last).eval()
    spec["normalization"] = normalization_from(spec["normalization"])
    spec.setdefault("tta", False)  # model.pt files written before the test-time options were recorded
    spec.setdefault("amp", False)
    spec["path"] = os.fspath(path)
    return model, spec


def normalization_from(d: dict) -> scans.Normalization:
    """``scans.Normalization`` from its ``to_dict()`` (JSON turns tuples into lists)."""
    return scans.Normalization(mode=d["mode"], clip=tuple(d["clip"]) if d.get("clip") else None,
                               window=tuple(d["window"]) if d.get("window") else None)
