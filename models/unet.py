"""U-Net decoder over any registered encoder (Ronneberger et al. 2015, arXiv:1505.04597)."""
import torch
from torch import nn

from .layers import DoubleConv, pad_to_multiple

UPSAMPLING = ("transpose", "bilinear")


class UpBlock(nn.Module):
    """Upsample by `factor` to `out_chans`, concatenate the skip, two 3x3 conv-BN-ReLU.

    (B, in_chans, h, w) [+ skip (B, skip_chans, h*f, w*f)] -> (B, out_chans, h*f, w*f).
    up='transpose': 'up-convolution' of the paper (f x f transposed conv, stride f);
    up='bilinear': bilinear interpolation then a 1x1 conv.
    """

    def __init__(self, in_chans, skip_chans, out_chans, factor, up="transpose"):
        super().__init__()
        if up not in UPSAMPLING:
            raise ValueError(f"up={up!r}: expected one of {UPSAMPLING}")
        if factor == 1:
            self.up = nn.Conv2d(in_chans, out_chans, 1)
        elif up == "transpose":
            self.up = nn.ConvTranspose2d(in_chans, out_chans, factor, stride=factor)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False),
                                    nn.Conv2d(in_chans, out_chans, 1))
        self.conv = DoubleConv(out_chans + skip_chans, out_chans)

    def forward(self, x, skip=None):
        x = self.up(x)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    """U-Net: encoder features -> expanding path with concatenated skips -> 1x1 conv head.

    (B, in_chans, H, W) -> logits (B, num_classes, H, W) for any H, W: the input is zero-padded
    to a multiple of the deepest stride and the logits cropped back. Decoder level i has
    `decoder_channels[i]` channels (default: the encoder's, as in the paper). Encoders whose
    shallowest feature has stride > 1 (timm) get one more up block, without skip, to full size.
    """

    arch = "unet"
    output_layer = "head"  # the layer whose shape depends on the task (not in a network file)

    def __init__(self, encoder, num_classes, up="transpose", decoder_channels=None):
        super().__init__()
        chans, reds = encoder.channels, encoder.reductions
        dec = list(decoder_channels or chans[:-1])
        if len(dec) != len(chans) - 1:
            raise ValueError(f"decoder_channels={decoder_channels!r}: expected {len(chans) - 1} values, "
                             f"one per skip level of encoder {encoder.name!r}")
        if any(b % a for a, b in zip(reds, reds[1:])):
            raise ValueError(f"encoder {encoder.name!r} strides {reds}: expected each to divide the next")
        self.encoder = encoder
        self.num_classes = num_classes
        blocks, in_chans = [], chans[-1]
        for i in reversed(range(len(dec))):
            blocks.append(UpBlock(in_chans, chans[i], dec[i], reds[i + 1] // reds[i], up))
            in_chans = dec[i]
        self.decoder = nn.ModuleList(blocks)
        self.final_up = None
        if reds[0] > 1:
            self.final_up = UpBlock(in_chans, 0, max(in_chans // 2, 8), reds[0], up)
            in_chans = max(in_chans // 2, 8)
        self.head = nn.Conv2d(in_chans, num_classes, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        features = self.encoder(pad_to_multiple(x, max(self.encoder.reductions)))
        y = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            y = block(y, skip)
        if self.final_up is not None:
            y = self.final_up(y)
        return self.head(y)[..., :h, :w]
