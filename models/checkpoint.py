"""The transfer contract: an encoder checkpoint moves exactly into the encoder of a U-Net or a TransUNet;
a network checkpoint moves exactly into the same segmenter, all but its output layer.

Encoder file (``encoder.pt``; torch.save, loadable with weights_only=True): format, encoder
registry name, its config (constructor arguments), its state_dict only, and free-form meta
(pretext task, data, run config, git commit, jigsaw permutations ...).

Network file (``network.pt``, written by pretext tasks that train a whole segmenter, such as
``restore``): format, the segmenter's architecture, its encoder's name and config, the
segmenter's own constructor arguments, and every tensor of the segmenter except those of its
output layer (``segmenter.output_layer``, the one layer whose shape depends on the task), plus meta.
"""
import math
import os

import torch

from atomicio import atomic_path

from .encoders import Encoder, create_encoder

FORMAT = "models.encoder/1"
NETWORK_FORMAT = "models.network/1"
# config entries that do not change the tensors an encoder holds
_RUNTIME_KEYS = ("max_reduction", "drop_rate", "drop_path_rate")


def _find_encoder(model):
    """The Encoder itself, or the `.encoder` of a segmenter / pretext model (DDP-wrapped or not)."""
    model = getattr(model, "module", model)
    encoder = model if isinstance(model, Encoder) else getattr(model, "encoder", None)
    if not isinstance(encoder, Encoder):
        raise ValueError(f"{type(model).__name__} is neither a models.Encoder nor has one as .encoder")
    return encoder


def _check_plain(value, where="meta"):
    """Raise unless `value` is made of str/number/bool/None/tensor, lists, tuples and str-keyed dicts."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has key {k!r}: expected str keys")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not (value is None or isinstance(value, (str, int, float, bool, torch.Tensor))):
        raise ValueError(f"{where} is a {type(value).__name__}: expected str, number, bool, None, "
                         "tensor, list or dict (the file is read with weights_only=True)")


def save_encoder(path, encoder, **meta):
    """Write the encoder's name, config and state_dict plus `meta` to `path`, atomically.

    `encoder` is an Encoder or a model holding one as `.encoder`. Returns `path`.
    """
    encoder = _find_encoder(encoder)
    if not encoder.name:
        raise ValueError(f"{type(encoder).__name__} has no registry name: build it with models.create_encoder")
    _check_plain(meta)
    payload = dict(format=FORMAT, name=encoder.name, config=encoder.config,
                   state_dict={k: v.detach().cpu() for k, v in encoder.state_dict().items()}, meta=meta)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return os.fspath(path)


def _load(path):
    """The dict a checkpoint file holds (tensors and plain values only), or None for anything else."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a training checkpoint of an old version, code, or no torch file at all (anything)
        return None
    return ckpt if isinstance(ckpt, dict) else None


def checkpoint_format(path) -> str | None:
    """``FORMAT`` (an encoder file), ``NETWORK_FORMAT`` (a network file) or None (neither, or unreadable)."""
    ckpt = _load(os.fspath(path)) if os.path.isfile(path) else None
    return ckpt.get("format") if ckpt and ckpt.get("format") in (FORMAT, NETWORK_FORMAT) else None


def _read(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder checkpoint not found: {path}")
    ckpt = _load(path)
    if ckpt is not None and ckpt.get("format") == NETWORK_FORMAT:  # its encoder part, for encoder-only use
        prefix = "encoder."
        ckpt = dict(format=FORMAT, name=ckpt["encoder"], config=ckpt["encoder_config"], meta=ckpt["meta"],
                    state_dict={k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        sibling = os.path.join(os.path.dirname(path), "encoder.pt")
        hint = (f"; use {sibling}, the encoder its run saved" if os.path.isfile(sibling) and os.path.basename(path) != "encoder.pt"
                else "; a run's checkpoint.pt holds the whole training state: pass the encoder.pt that python -m pretrain writes")
        raise ValueError(f"{path} is not an encoder checkpoint written by models.save_encoder "
                         f"(format {FORMAT!r}){hint}")
    return ckpt


def load_checkpoint_meta(path):
    """{name, config, num_tensors, meta} of an encoder checkpoint, without building anything."""
    ckpt = _read(path)
    return dict(name=ckpt["name"], config=ckpt["config"], num_tensors=len(ckpt["state_dict"]),
                meta=ckpt["meta"])


def _architecture(config):
    return {k: v for k, v in config.items() if k not in _RUNTIME_KEYS}


def _depth(config):
    return config.get("max_reduction") or math.inf


def load_encoder(model, path):
    """Copy the encoder checkpoint at `path` into `model` (an Encoder, or a U-Net / TransUNet's .encoder).

    Strict: the registry name and architecture config must match (else a ValueError naming both),
    and every tensor of the model's encoder must come from the checkpoint with the same shape.
    The only checkpoint tensors allowed to stay unused are those of levels deeper than the model's
    encoder keeps (a TransUNet stops at stride 16), and only when the checkpoint holds exactly the
    tensors of its own architecture. Returns {name, config, path, loaded, skipped, meta}.
    """
    encoder = _find_encoder(model)
    ckpt = _read(path)
    name, config, state = ckpt["name"], ckpt["config"], ckpt["state_dict"]
    if name != encoder.name or _architecture(config) != _architecture(encoder.config):
        raise ValueError(f"checkpoint encoder {name!r} {config} in {path} does not match "
                         f"model encoder {encoder.name!r} {encoder.config}")
    own = encoder.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    skipped = []
    if unexpected and _depth(config) > _depth(encoder.config):
        with torch.device("meta"):
            reference = set(create_encoder(name, **config).state_dict())
        if reference == set(state):
            skipped, unexpected = unexpected, []
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint {path} does not fit encoder {encoder.name!r}: "
                         f"missing {len(missing)} {missing[:10]}, unexpected {len(unexpected)} "
                         f"{unexpected[:10]}, shape mismatches {len(shapes)} {shapes[:10]}")
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)
    return dict(name=name, config=config, path=os.fspath(path), loaded=len(own), skipped=skipped,
                meta=ckpt["meta"])


def encoder_from_checkpoint(path):
    """Build the encoder a checkpoint describes and load its weights. Returns (encoder, summary)."""
    ckpt = load_checkpoint_meta(path)
    encoder = create_encoder(ckpt["name"], **ckpt["config"])
    return encoder, load_encoder(encoder, path)


def save_network(path, segmenter, segmenter_kwargs: dict, **meta):
    """Write every tensor of ``segmenter`` (a U-Net or TransUNet) except its output layer, with what
    rebuilds it (architecture, encoder name and config, ``segmenter_kwargs``), and ``meta``, atomically."""
    encoder = _find_encoder(segmenter)
    if not encoder.name:
        raise ValueError(f"{type(encoder).__name__} has no registry name: build it with models.create_encoder")
    _check_plain(meta)
    _check_plain(segmenter_kwargs, "segmenter_kwargs")
    skip = segmenter.output_layer + "."
    state = {k: v.detach().cpu() for k, v in segmenter.state_dict().items() if not k.startswith(skip)}
    payload = dict(format=NETWORK_FORMAT, arch=segmenter.arch, encoder=encoder.name, encoder_config=encoder.config,
                   segmenter_kwargs=dict(segmenter_kwargs), output_layer=segmenter.output_layer, state_dict=state,
                   meta=meta)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return os.fspath(path)


def load_network_meta(path):
    """{arch, encoder, encoder_config, segmenter_kwargs, num_tensors, meta} of a network file (ValueError for any
    other file), without building anything."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"network checkpoint not found: {path}")
    ckpt = _load(path)
    if ckpt is None or ckpt.get("format") != NETWORK_FORMAT:
        raise ValueError(f"{path} is not a network checkpoint written by models.save_network (format {NETWORK_FORMAT!r})")
    return {k: ckpt[k] for k in ("arch", "encoder", "encoder_config", "segmenter_kwargs", "meta")} | {
        "num_tensors": len(ckpt["state_dict"])}


def load_network(segmenter, path):
    """Copy a network file into ``segmenter``: every tensor but those of its output layer, exactly.

    The architecture, the encoder (name and architecture config) and every tensor's name and shape
    must match, else a one-line ValueError naming both sides; the output layer keeps its fresh
    weights. Returns the names of the transferred tensors (keys of ``segmenter.state_dict()``)."""
    meta = load_network_meta(path)
    encoder = _find_encoder(segmenter)
    if meta["arch"] != segmenter.arch:
        raise ValueError(f"{path} holds a {meta['arch']} network; it does not go into a {segmenter.arch} "
                         f"(pretrain with --arch {segmenter.arch})")
    if meta["encoder"] != encoder.name or _architecture(meta["encoder_config"]) != _architecture(encoder.config):
        raise ValueError(f"{path} holds encoder {meta['encoder']!r} {meta['encoder_config']}; the {segmenter.arch} has "
                         f"{encoder.name!r} {encoder.config}")
    state = _load(os.fspath(path))["state_dict"]
    own = segmenter.state_dict()
    skip = segmenter.output_layer + "."
    missing = sorted(k for k in own if not k.startswith(skip) and k not in state)
    unexpected = sorted(k for k in state if k not in own or k.startswith(skip))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{path} does not fit this {segmenter.arch}: missing {len(missing)} {missing[:5]}, unexpected "
                         f"{len(unexpected)} {unexpected[:5]}, shape mismatches {len(shapes)} {shapes[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return sorted(state)
