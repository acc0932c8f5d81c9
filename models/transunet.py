"""TransUNet (Chen et al. 2021, arXiv:2102.04306): CNN encoder, ViT over its 1/16 map, cascaded upsampler."""
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from .layers import DoubleConv, conv_bn_relu, pad_to_multiple

# size presets; `paper` is R50-ViT-B/16 (ViT-B: 12 layers, hidden 768, 12 heads, MLP 3072).
PRESETS = {
    "tiny": dict(hidden=128, depth=4, heads=4, mlp_dim=256, head_channels=128,
                 decoder_channels=(64, 32, 16, 8), img_size=64),
    "paper": dict(hidden=768, depth=12, heads=12, mlp_dim=3072, head_channels=512,
                  decoder_channels=(256, 128, 64, 16), img_size=224),
}


def default_size(encoder_name):
    """The preset used when none is given: the paper's for resnet50, else the tiny one."""
    return "paper" if encoder_name == "resnet50" else "tiny"


class CascadeBlock(nn.Module):
    """Decoder block of the cascaded upsampler: bilinear x2, concatenate the skip, two conv3x3-BN-ReLU.

    (B, in_chans, h, w) [+ skip (B, skip_chans, 2h, 2w)] -> (B, out_chans, 2h, 2w).
    """

    def __init__(self, in_chans, skip_chans, out_chans):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_chans + skip_chans, out_chans)

    def forward(self, x, skip=None):
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class TransUNet(nn.Module):
    """TransUNet over a CNN encoder whose deepest feature has stride 16 (deeper levels unused).

    (B, in_chans, H, W) -> encoder -> 1/16 map (B, C16, H/16, W/16) -> 1x1 conv patch embedding
    (B, N, hidden) + learned position embedding (stored for an img_size/16 grid, bilinearly
    interpolated for other grids) -> `depth` timm ViT blocks -> LayerNorm -> (B, hidden, H/16, W/16)
    -> conv3x3 to head_channels -> 4 cascade blocks (x2 each, skips from the 1/8, 1/4, 1/2
    features for n_skip=3, plus the 1/1 feature for n_skip=4) -> conv3x3 -> logits
    (B, num_classes, H, W). Inputs of any size are zero-padded to a multiple of 16 and cropped back.
    `size` picks a preset ('tiny' or 'paper'); explicit arguments override it.
    """

    arch = "transunet"
    output_layer = "head"  # the layer whose shape depends on the task (not in a network file)

    def __init__(self, encoder, num_classes, img_size=None, size=None, hidden=None, depth=None,
                 heads=None, mlp_dim=None, head_channels=None, decoder_channels=None, n_skip=3,
                 dropout=0.1, attn_dropout=0.0):
        super().__init__()
        size = size or default_size(encoder.name)
        if size not in PRESETS:
            raise ValueError(f"size={size!r}: expected one of {list(PRESETS)}")
        given = dict(hidden=hidden, depth=depth, heads=heads, mlp_dim=mlp_dim, head_channels=head_channels,
                     decoder_channels=decoder_channels, img_size=img_size)
        cfg = {k: PRESETS[size][k] if v is None else v for k, v in given.items()}
        reds = encoder.reductions
        if 16 not in reds or max(reds) > 16:
            raise ValueError(f"encoder {encoder.name!r} has strides {reds}: TransUNet expects a deepest "
                             "stride of 16 (build it with create_encoder(..., max_reduction=16))")
        if cfg["hidden"] % cfg["heads"]:
            raise ValueError(f"hidden={cfg['hidden']} is not divisible by heads={cfg['heads']}")
        if len(cfg["decoder_channels"]) != 4:
            raise ValueError(f"decoder_channels={cfg['decoder_channels']!r}: expected 4 values (1/8 .. 1/1)")
        if not 0 <= n_skip <= 4:
            raise ValueError(f"n_skip={n_skip!r}: expected 0..4 (skips at 1/8, 1/4, 1/2, 1/1)")
        img = cfg["img_size"]
        img_h, img_w = (img, img) if isinstance(img, int) else img
        self.encoder = encoder
        self.num_classes = num_classes
        self.size = size
        self.grid = (-(-img_h // 16), -(-img_w // 16))
        chans = dict(zip(reds, encoder.channels))  # the last feature of each stride
        d = cfg["hidden"]
        self.patch_embed = nn.Conv2d(chans[16], d, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], d))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[
            Block(d, cfg["heads"], mlp_ratio=cfg["mlp_dim"] / d, qkv_bias=True, proj_drop=dropout,
                  attn_drop=attn_dropout) for _ in range(cfg["depth"])])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.conv_more = conv_bn_relu(d, cfg["head_channels"])
        self.skip_strides = [r if j < n_skip and r in chans else None for j, r in enumerate((8, 4, 2, 1))]
        blocks, in_chans = [], cfg["head_channels"]
        for r, out_chans in zip(self.skip_strides, cfg["decoder_channels"]):
            blocks.append(CascadeBlock(in_chans, chans[r] if r else 0, out_chans))
            in_chans = out_chans
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_chans, num_classes, 3, padding=1)

    def position_embedding(self, gh, gw):
        """(1, gh * gw, hidden): the stored grid's embedding, bilinearly resized to gh x gw.

        Resized even at the stored size (exactly the identity there), so the network has no
        branch on its input size and exports to ONNX with dynamic height and width.
        """
        p = self.pos_embed.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
        p = F.interpolate(p, size=(gh, gw), mode="bilinear", align_corners=False)
        return p.flatten(2).transpose(1, 2)

    def forward(self, x):
        h, w = x.shape[-2:]
        features = dict(zip(self.encoder.reductions, self.encoder(pad_to_multiple(x, 16))))
        t = self.patch_embed(features[16])
        b, d, gh, gw = t.shape
        t = self.pos_drop(t.flatten(2).transpose(1, 2) + self.position_embedding(gh, gw))
        t = self.norm(self.blocks(t))
        y = self.conv_more(t.transpose(1, 2).reshape(b, d, gh, gw))
        for block, r in zip(self.decoder, self.skip_strides):
            y = block(y, features[r] if r else None)
        return self.head(y)[..., :h, :w]
