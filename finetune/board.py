"""What a fine-tuning run shows in TensorBoard besides its curves: overlays of image / label / prediction
on fixed test slices with titles and a colour legend, its settings for HPARAMS, and its charts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import engine
import scans

from .inference import Inference

# RGB colours of classes 1, 2, ... in the overlay panel
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [245, 130, 48]], np.float32)


def panel_slices(loaded: list[scans.LoadedCase], axis: int = 2, n: int = 4) -> list[tuple[int, int]]:
    """Fixed slices for the overlay panel: for each of the first ``n`` cases, the slice with the most foreground."""
    picks = []
    for i, c in enumerate(loaded[:n]):
        area = np.moveaxis(c.label > 0, axis, 0).reshape(c.label.shape[axis], -1).sum(1)
        picks.append((i, int(area.argmax())))
    return picks


def _overlay(gray: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    rgb = np.repeat(np.clip(gray, 0, 1)[..., None] * 255, 3, -1).astype(np.float32)
    for c in range(1, int(labels.max()) + 1):
        m = labels == c
        rgb[m] = (1 - alpha) * rgb[m] + alpha * PALETTE[(c - 1) % len(PALETTE)]
    return rgb.astype(np.uint8)


@torch.no_grad()
def overlay_panel(model, loaded: list[scans.LoadedCase], picks, inference: Inference, device="cpu",
                  class_names: dict | None = None) -> np.ndarray:
    """uint8 image (HWC) for TensorBoard: per picked slice, image | label | prediction (classes
    coloured over the image; the slice predicted alone, without test-time augmentation), each tile
    padded to the training size and enlarged 2x (nearest); column titles on top and a colour legend
    with the class names at the bottom."""
    was_training = model.training
    model.eval()
    rows = []
    one_slice = inference.replace(axis=2, tta=False, amp=False)  # a slice as a one-slice volume
    size = tuple(inference.size)
    try:
        for case_index, s in picks:
            c = loaded[case_index]
            img = np.take(c.image, s, axis=inference.axis)
            lab = np.take(c.label, s, axis=inference.axis)
            in_plane = [c.spacing[a] for a in scans.in_plane_axes(inference.axis)]
            pred = one_slice.probabilities(model, img[..., None], (*in_plane, 1.0), device)[:, :, :, 0].argmax(0)
            tiles = [_overlay(img, np.zeros_like(lab)), _overlay(img, lab), _overlay(img, pred)]
            rows.append(np.concatenate([scans.pad_or_crop(t, size) for t in tiles], 1))
    finally:
        model.train(was_training)
    grid = np.concatenate(rows, 0).repeat(2, 0).repeat(2, 1)
    num_classes = max(2, max(int(c.label.max()) for c in loaded) + 1)
    return _titled(grid, ("image", "label", "prediction"), class_names, num_classes)


def _font(size: int):
    """Pillow's built-in font at ``size`` px (FreeType), or its small bitmap font without FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _titled(grid: np.ndarray, titles, class_names: dict | None, num_classes: int) -> np.ndarray:
    """``grid`` with a centred title above each of its equal-width columns and a legend strip below."""
    from PIL import Image, ImageDraw

    h, w = grid.shape[:2]
    band, font = 26, _font(15)
    canvas = Image.new("RGB", (w, h + 2 * band), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (0, band))
    draw = ImageDraw.Draw(canvas)
    col = w // len(titles)
    for i, title in enumerate(titles):
        x = i * col + max(2, (col - int(draw.textlength(title, font=font))) // 2)
        draw.text((x, 4), title, fill=(0, 0, 0), font=font)
    x = 6
    for k in range(1, num_classes):
        colour = tuple(int(v) for v in PALETTE[(k - 1) % len(PALETTE)])
        draw.rectangle((x, h + band + 6, x + 12, h + band + 18), fill=colour)
        name = (class_names or {}).get(str(k)) or f"class {k}"
        draw.text((x + 16, h + band + 4), name, fill=(0, 0, 0), font=font)
        x += 16 + int(draw.textlength(name, font=font)) + 14
    return np.asarray(canvas)


def class_name(class_names: dict | None, k: str) -> str:
    """``dataset.json``'s name of class ``k`` (for example Anterior), else ``class{k}``."""
    return (class_names or {}).get(str(k)) or f"class{k}"


def hparams(args, init_info: dict) -> dict:
    """Short, readable settings for the HPARAMS tab. The leading columns are the ones a pretraining run fills too
    (pretrain.train.task_hparams; TensorBoard draws a run in its default view only when the first columns are
    filled): ``init`` is random, imagenet or the pretext task, a filter picks it. Fine-tuning's own settings
    follow as ``tuning.OPTION``, after every shared column in name order."""
    pretrained = init_info["init"] in ("checkpoint", "network")
    init = init_info.get("pretext", init_info["init"]) if pretrained else init_info["init"]
    return {"kind": "fine-tuning", "init": init, "arch": args.arch, "encoder": init_info["encoder"],
            "label_fraction": f"{args.fraction * 100:g}%", "label_seed": str(args.label_seed), "seed": args.seed,
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "tuning.init_file": str(Path(args.init).parent) if pretrained else "-",
            "tuning.encoder_lr_scale": args.encoder_lr_scale, "tuning.freeze_encoder_steps": args.freeze_encoder_steps}


def write_test(writer, model, test_loaded, summary: dict, inference: Inference, device, class_names, step: int,
               settings: dict) -> None:
    """The test summaries of a finished run: the overlay panel, per-class and mean Dice, HD95, HPARAMS and charts."""
    panel = overlay_panel(model, test_loaded, panel_slices(test_loaded, inference.axis), inference, device, class_names)
    writer.add_image("test/image_label_prediction", panel, step, dataformats="HWC")
    for k, v in summary["dice_per_class"].items():
        writer.add_scalar(f"test/dice_{class_name(class_names, k)}", v, step)
    writer.add_scalar("test/mean_dice", summary["mean_dice"], step)
    writer.add_scalar("test/mean_hd95_mm", summary["mean_hd95"], step)
    engine.write_hparams(writer, settings)
    engine.write_layout(writer, {"test Dice (one point per run)": ["test/mean_dice"],
                                 "watch Dice (training-pool cases outside the fraction)": ["watch/dice"],
                                 "training loss": ["train/loss"], "Dice loss": ["train/dice_loss"]},
                        category="fine-tuning: every run")
