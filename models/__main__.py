"""Inspect the model zoo.

    .venv/bin/python -m models list

Prints every registered encoder with its parameter count, channels and strides, then the
parameter counts of reference segmenters (built on the meta device: nothing is allocated).
"""
import argparse

import torch

from . import count_parameters, create_encoder, create_segmenter, list_encoders

SEGMENTERS = [  # (label, arch, encoder, kwargs)
    ("U-Net, unet_tiny, 1 ch, 2 classes", "unet", "unet_tiny", dict(num_classes=2)),
    ("TransUNet tiny, unet_tiny, 1 ch, 2 classes", "transunet", "unet_tiny", dict(num_classes=2)),
    ("U-Net, resnet18, 1 ch, 2 classes", "unet", "resnet18", dict(num_classes=2)),
    ("TransUNet tiny, resnet18, 1 ch, 2 classes", "transunet", "resnet18", dict(num_classes=2)),
    ("U-Net (Ronneberger 2015), unet, 1 ch, 2 classes", "unet", "unet", dict(num_classes=2)),
    ("TransUNet R50-ViT-B/16 (Chen 2021), 3 ch, 9 classes, 224", "transunet", "resnet50",
     dict(num_classes=9, in_chans=3, img_size=224)),
]


def get_args_parser():
    p = argparse.ArgumentParser("python -m models", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["list"])
    return p


def main(argv=None):
    get_args_parser().parse_args(argv)
    with torch.device("meta"):
        print(f"{'encoder':<18}{'params':>10}  {'channels':<28}strides")
        for name in list_encoders():
            e = create_encoder(name)
            print(f"{name:<18}{count_parameters(e) / 1e6:>9.2f}M  {str(e.channels):<28}{e.reductions}")
        print(f"\n{'segmenter':<58}{'params':>10}")
        for label, arch, encoder, kwargs in SEGMENTERS:
            n = count_parameters(create_segmenter(arch, encoder, **kwargs))
            print(f"{label:<58}{n / 1e6:>9.2f}M")


if __name__ == "__main__":
    main()
