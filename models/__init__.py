"""Encoder registry (timm + classic U-Net encoder), U-Net, TransUNet, pretext heads, encoder and network checkpoints."""
from .checkpoint import (FORMAT, NETWORK_FORMAT, checkpoint_format, encoder_from_checkpoint, load_checkpoint_meta,
                         load_encoder, load_network, load_network_meta, save_encoder, save_network)
from .encoders import ENCODERS, Encoder, TimmEncoder, UNetEncoder, check_imagenet_weights, create_encoder, list_encoders
from .heads import (JigsawHead, RotationHead, SimCLRProjectionHead, jigsaw_permutations, pooled_features,
                    simclr_projection_head)
from .layers import count_parameters
from .registry import Registry
from .segmenters import ARCHS, create_segmenter
from .transunet import PRESETS, TransUNet
from .unet import UNet

__all__ = [
    "FORMAT", "NETWORK_FORMAT", "checkpoint_format", "load_network", "load_network_meta", "save_network",
    "ARCHS", "ENCODERS", "Encoder", "Registry", "JigsawHead", "PRESETS", "RotationHead", "SimCLRProjectionHead",
    "TimmEncoder", "TransUNet", "UNet", "UNetEncoder", "check_imagenet_weights", "count_parameters", "create_encoder",
    "create_segmenter", "encoder_from_checkpoint", "jigsaw_permutations", "list_encoders",
    "load_checkpoint_meta", "load_encoder", "pooled_features", "save_encoder", "simclr_projection_head",
]
