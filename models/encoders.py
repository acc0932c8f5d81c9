"""Encoder registry: the classic U-Net encoder at several widths and timm feature extractors.

Every encoder maps (B, in_chans, H, W) to a list of feature maps, shallowest first, and says
what it returns: `.channels[i]` and `.reductions[i]` (stride vs the input) of feature i.
`.name` is the registry name and `.config` the JSON-serialisable constructor arguments, so
`create_encoder(enc.name, **enc.config)` rebuilds the same architecture (see checkpoint.py).
"""
import os
from functools import lru_cache

import timm
import torch
from torch import nn

from .layers import DoubleConv
from .registry import Registry


class Encoder(nn.Module):
    """Base class: forward(x) -> list of (B, channels[i], H / reductions[i], W / reductions[i])."""

    def __init__(self, channels, reductions, config):
        super().__init__()
        self.channels = list(channels)
        self.reductions = list(reductions)
        self.config = dict(config)
        self.name = ""  # set by create_encoder


class UNetEncoder(Encoder):
    """Contracting path of U-Net (Ronneberger et al. 2015, arXiv:1505.04597).

    Level i is two 3x3 conv-BN-ReLU layers with base_width * 2**i channels, preceded by 2x2
    max-pooling for i > 0; levels run down to stride `max_reduction` (16: five levels, as in the
    paper). Convolutions are padded (the paper's are not) so sizes halve exactly.
    (B, in_chans, H, W) -> [(B, base_width * 2**i, H / 2**i, W / 2**i) for each level i].
    """

    def __init__(self, in_chans=1, base_width=64, max_reduction=16):
        if max_reduction < 1 or max_reduction & (max_reduction - 1):
            raise ValueError(f"max_reduction={max_reduction!r}: expected a power of two >= 1")
        if base_width < 1:
            raise ValueError(f"base_width={base_width!r}: expected a positive integer")
        levels = max_reduction.bit_length()
        channels = [base_width * 2 ** i for i in range(levels)]
        super().__init__(channels, [2 ** i for i in range(levels)],
                         dict(in_chans=in_chans, base_width=base_width, max_reduction=max_reduction))
        stages = [DoubleConv(in_chans, channels[0])]
        stages += [nn.Sequential(nn.MaxPool2d(2), DoubleConv(channels[i - 1], channels[i]))
                   for i in range(1, levels)]
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class TimmEncoder(Encoder):
    """Any timm model built with `features_only=True`; channels and reductions from its feature_info.

    `max_reduction` keeps only the features with stride <= max_reduction, and timm then drops the
    deeper layers altogether (TransUNet uses 16). `pretrained_file` is a local timm weights file
    (the state_dict of `timm.create_model(model_name)`); timm adapts the first convolution to
    `in_chans` (in_chans=1 sums the RGB filters). Nothing is downloaded.
    """

    def __init__(self, model_name, in_chans=1, max_reduction=None, pretrained_file=None, **timm_kwargs):
        kwargs = dict(timm_kwargs, features_only=True, in_chans=in_chans)
        if max_reduction is not None:
            with torch.device("meta"):
                info = timm.create_model(model_name, **kwargs).feature_info
            kwargs["out_indices"] = tuple(
                i for i, r in zip(info.out_indices, info.reduction()) if r <= max_reduction)
            if not kwargs["out_indices"]:
                raise ValueError(f"max_reduction={max_reduction!r}: timm {model_name!r} has no feature "
                                 f"with stride <= it (strides {info.reduction()})")
        if pretrained_file is not None:
            check_timm_weights_file(model_name, pretrained_file)
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=os.fspath(pretrained_file)))
        model = timm.create_model(model_name, **kwargs)
        super().__init__(model.feature_info.channels(), model.feature_info.reduction(),
                         dict(in_chans=in_chans, max_reduction=max_reduction, **timm_kwargs))
        self.model = model

    def forward(self, x):
        return list(self.model(x))


def check_timm_weights_file(model_name, path):
    """Raise unless `path` holds exactly the tensors of timm's `model_name` (classifier optional).

    timm loads weights into a features_only model non-strictly, so a wrong file would load
    partly and silently; this check makes it loud.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    with torch.device("meta"):
        reference = timm.create_model(model_name)
    classifier = reference.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    expected = set(reference.state_dict())
    try:  # tensors only: a file that would run code is refused here, before timm reads it
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle and zip errors of every kind)
        raise ValueError(f"weights file {path}: cannot read it as a state_dict of tensors "
                         f"({type(e).__name__}); expected torch.save(timm.create_model({model_name!r}).state_dict(), FILE)") from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # the wrappings timm unwraps
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    have = set(state)
    missing = sorted(k for k in expected - have
                     if not k.endswith("num_batches_tracked") and k.rsplit(".", 1)[0] not in classifier)
    unexpected = sorted(have - expected)
    if missing or unexpected:
        raise ValueError(f"weights file {path} does not fit timm model {model_name!r}: "
                         f"missing {len(missing)} {missing[:8]}, unexpected {len(unexpected)} {unexpected[:8]}")


# The registered encoders (``python -m models list``); any other timm model name also works (optionally
# written 'timm:NAME').
ENCODERS = Registry("encoder")


@ENCODERS.register
def unet_tiny(**kwargs) -> Encoder:
    """The classic U-Net encoder at base width 8 (0.49 M parameters in a U-Net; the quick CPU profile)."""
    return UNetEncoder(**{"base_width": 8, **kwargs})


@ENCODERS.register
def unet_small(**kwargs) -> Encoder:
    """The classic U-Net encoder at base width 16."""
    return UNetEncoder(**{"base_width": 16, **kwargs})


@ENCODERS.register
def unet(**kwargs) -> Encoder:
    """The classic U-Net encoder at the paper's base width, 64."""
    return UNetEncoder(**{"base_width": 64, **kwargs})


def timm_encoder(model_name: str):
    """A factory of timm's ``model_name`` as a feature extractor (its ``timm_name`` says which)."""
    def factory(**kwargs) -> Encoder:
        return TimmEncoder(model_name, **kwargs)
    factory.__name__ = factory.__qualname__ = model_name
    factory.__doc__ = f"timm's {model_name}, features_only."
    factory.timm_name = model_name
    return factory


for _name in ("resnet18", "resnet34", "resnet50", "efficientnet_b0"):
    ENCODERS.register(timm_encoder(_name))


def list_encoders():
    """The registered encoder names (any timm model with features_only works as well)."""
    return list(ENCODERS)


def encoder_factory(name: str):
    """(registry name, factory) of ``name``: a registered encoder, or a timm model (``NAME`` or ``timm:NAME``)."""
    if name in ENCODERS:
        return name, ENCODERS[name]
    timm_name = name[len("timm:"):] if name.startswith("timm:") else name
    if timm.is_model(timm_name):
        return timm_name, timm_encoder(timm_name)
    raise ValueError(f"unknown encoder {name!r}: expected one of {list_encoders()} "
                     "or a timm model name that supports features_only")


def check_imagenet_weights(name, path):
    """Raise (ValueError / FileNotFoundError, naming the file) unless `path` is a weights file for the timm
    encoder `name` (``create_encoder(name, pretrained_file=path)`` would load it); U-Net encoders have none."""
    _, factory = encoder_factory(name)
    if not hasattr(factory, "timm_name"):
        raise ValueError(f"encoder {name!r} has no ImageNet weights (--init imagenet is for timm encoders)")
    _check_weights_once(factory.timm_name, os.fspath(path), os.stat(path).st_mtime_ns if os.path.isfile(path) else 0)


@lru_cache(maxsize=16)
def _check_weights_once(model_name, path, mtime):
    check_timm_weights_file(model_name, path)


def create_encoder(name, in_chans=1, pretrained_file=None, **kwargs):
    """Build the encoder registered as `name`, or the timm model `name` / 'timm:NAME'.

    kwargs go to the encoder class: `base_width`, `max_reduction` for U-Net encoders;
    `max_reduction` and any timm.create_model argument for timm encoders.
    """
    name, factory = encoder_factory(name)
    if pretrained_file is not None:
        if not hasattr(factory, "timm_name"):
            raise ValueError(f"pretrained_file is for timm encoders; {name!r} has no ImageNet weights "
                             "(load a pretraining checkpoint with models.load_encoder)")
        kwargs["pretrained_file"] = pretrained_file
    try:
        encoder = factory(in_chans=in_chans, **kwargs)
    except RuntimeError as e:  # timm: e.g. no features_only support, weights of the wrong shape
        raise ValueError(f"cannot build encoder {name!r}: {e}") from e
    encoder.name = name
    return encoder
