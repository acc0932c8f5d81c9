"""Segmentation fine-tuning at a label fraction (``train``), how a trained network is applied (``inference``),
per-volume scores (``evaluate``, ``metrics``), losses, predict and export; python -m finetune."""
from .evaluate import evaluate_cases
from .inference import Inference
from .losses import LOSSES, SegmentationLoss, focal_loss, soft_dice_loss
from .metrics import case_metrics, dice_score, hd95, summarize
from .train import METRICS, check_args, get_args_parser, main, run, run_identity

__all__ = [
    "Inference", "LOSSES", "METRICS", "SegmentationLoss", "case_metrics", "check_args", "dice_score", "evaluate_cases",
    "focal_loss", "get_args_parser", "hd95", "main", "run", "run_identity", "soft_dice_loss", "summarize",
]
