"""Small building blocks shared by the encoders and the segmentation networks."""
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_chans, out_chans, kernel_size=3):
    """Conv (no bias) -> BatchNorm -> ReLU, 'same' padding. (B, in, H, W) -> (B, out, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(inplace=True),
    )


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU layers, the U-Net building block. (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_chans, out_chans):
        super().__init__(conv_bn_relu(in_chans, out_chans), conv_bn_relu(out_chans, out_chans))


def pad_to_multiple(x, multiple):
    """Zero-pad the bottom and right of (B, C, H, W) so H and W are multiples of `multiple`.

    Pads (by zero pixels) even when nothing is missing: no branch on the input size, so networks
    export to ONNX with dynamic height and width; the values are the same.
    """
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


def count_parameters(module, trainable_only=False):
    """Number of parameters (elements) of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
