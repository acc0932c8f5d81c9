"""The transfer contract: an encoder checkpoint moves exactly into the encoder of a U-Net or a TransUNet.

File contents (torch.save, loadable with weights_only=True): format, encoder registry name,
its config (constructor arguments), its state_dict only, and free-form meta (pretext task, data,
run config, git commit, jigsaw permutations ...).
"""
import math
import os

import torch

from atomicio import atomic_path

from .encoders import Encoder, create_encoder

FORMAT = "models.encoder/1"
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


def _read(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a training checkpoint (RNG states: UnpicklingError) or no torch file at all (anything)
        ckpt = None
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
