"""create_segmenter: a U-Net or a TransUNet around a registered encoder; the architectures are registered
like the encoders (``@ARCHS.register``)."""
from .encoders import Encoder, create_encoder
from .registry import Registry
from .transunet import TransUNet
from .unet import UNet

ARCHS = Registry("architecture")


@ARCHS.register
def unet(encoder: Encoder, num_classes: int, img_size=None, **kwargs) -> UNet:
    """U-Net (Ronneberger et al. 2015): a decoder over the encoder's features; ``img_size`` is not used."""
    return UNet(encoder, num_classes, **kwargs)


@ARCHS.register
def transunet(encoder: Encoder, num_classes: int, img_size=None, **kwargs) -> TransUNet:
    """TransUNet (Chen et al. 2021): transformer blocks over the encoder's 1/16 map, cascaded upsampler."""
    return TransUNet(encoder, num_classes, img_size=img_size, **kwargs)


transunet.encoder_kwargs = {"max_reduction": 16}  # deeper encoder levels are not used (as in the paper)


def create_segmenter(arch, encoder, num_classes, in_chans=1, img_size=None, **kwargs):
    """Segmentation network `arch` ('unet' or 'transunet') over `encoder` (a registry name or an Encoder).

    (B, in_chans, H, W) -> logits (B, num_classes, H, W), any H and W. kwargs go to the network
    (UNet: up, decoder_channels; TransUNet: size, hidden, depth, heads, mlp_dim, ...), except
    `pretrained_file` and `encoder_kwargs`, which go to create_encoder when `encoder` is a name.
    For TransUNet a named encoder is built down to stride 16 only (max_reduction=16), and
    `img_size` (int or (h, w); default from the size preset) sizes its position embedding; U-Net
    ignores `img_size`. `create_segmenter("transunet", "resnet50", 9, in_chans=3, img_size=224)`
    is the paper's R50-ViT-B/16.
    """
    factory = ARCHS.lookup(arch)
    encoder_kwargs = dict(kwargs.pop("encoder_kwargs", None) or {})
    pretrained_file = kwargs.pop("pretrained_file", None)
    if isinstance(encoder, str):
        for k, v in getattr(factory, "encoder_kwargs", {}).items():
            encoder_kwargs.setdefault(k, v)
        encoder = create_encoder(encoder, in_chans=in_chans, pretrained_file=pretrained_file, **encoder_kwargs)
    elif not isinstance(encoder, Encoder):
        raise ValueError(f"encoder={encoder!r}: expected a registry name or a models.Encoder")
    elif encoder_kwargs or pretrained_file is not None:
        raise ValueError("encoder_kwargs / pretrained_file apply only when encoder is given by name")
    elif encoder.config.get("in_chans") != in_chans:
        raise ValueError(f"in_chans={in_chans} but encoder {encoder.name!r} was built for "
                         f"in_chans={encoder.config.get('in_chans')}")
    return factory(encoder, num_classes, img_size=img_size, **kwargs)
