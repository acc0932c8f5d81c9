"""Experiment configs (YAML): what the transfer table is made of.

A config names the dataset and split, the encoder, the pretext tasks, the inits, the
architectures, the label fractions, the seeds and the schedules. ``load_config`` checks every
key, so a typo is an error rather than a silently ignored setting.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from scans import ScanError, check_fraction

TASKS = ("rotation", "jigsaw", "simclr")
BASE_INITS = ("random", "imagenet")
ARCHS = ("unet", "transunet")

DEFAULTS = {
    "name": None,                 # default: the file name without .yaml
    "data": "data/msd_hippocampus",
    "split": {"test_fraction": 0.2, "seed": 0},
    "encoder": "unet_tiny",
    "tasks": list(TASKS),         # pretext tasks to pretrain
    "inits": ["random", "rotation", "jigsaw", "simclr"],
    "imagenet_weights": None,     # local timm weights file; 'imagenet' init needs it
    "archs": list(ARCHS),
    "fractions": [0.01, 0.1, 1.0],
    "seeds": [0],
    "device": "auto",
    "runs_dir": None,             # default: runs/<name>
    "results_dir": None,          # default: results/<name>
    "cpus_per_job": 2,            # threads per job; jobs at once = cores // cpus_per_job
    "timeout_min": 120,           # per job (submitit); local jobs are killed after it
    "pretrain": {"epochs": 3, "batch_size": 32, "args": {}, "task_args": {}},
    "finetune": {"steps": 800, "batch_size": 32, "args": {}, "arch_args": {}},
    "embeddings": {"slices": 256},
}


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"{where}: unknown key {k!r}; expected one of {sorted(base)}")
        out[k] = _merge(base[k], v, f"{where}.{k}") if isinstance(base[k], dict) and base[k] and isinstance(v, dict) else v
    return out


def load_config(path: str | Path) -> dict:
    """Read and check a config; fill defaults, ``name``, ``runs_dir`` and ``results_dir``."""
    p = Path(path)
    if not p.is_file():
        raise ScanError(p, "config file does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ScanError(p, f"invalid YAML: {e}") from None
    cfg = _merge(DEFAULTS, raw, str(p))
    cfg["name"] = cfg["name"] or p.stem
    cfg["runs_dir"] = cfg["runs_dir"] or f"runs/{cfg['name']}"
    cfg["results_dir"] = cfg["results_dir"] or f"results/{cfg['name']}"
    cfg["config_path"] = str(p)
    for t in cfg["tasks"]:
        if t not in TASKS:
            raise ValueError(f"{p}: unknown pretext task {t!r}; expected one of {TASKS}")
    for i in cfg["inits"]:
        if i not in BASE_INITS and i not in cfg["tasks"]:
            raise ValueError(f"{p}: init {i!r} is neither {BASE_INITS} nor one of the pretext tasks {cfg['tasks']}")
    if "imagenet" in cfg["inits"]:
        if not cfg["imagenet_weights"]:
            print(f"{p}: no imagenet_weights file given, so the 'imagenet' init is left out")
            cfg["inits"] = [i for i in cfg["inits"] if i != "imagenet"]
        elif not Path(cfg["imagenet_weights"]).is_file():
            raise ScanError(cfg["imagenet_weights"], "imagenet_weights file does not exist")
    for a in cfg["archs"]:
        if a not in ARCHS:
            raise ValueError(f"{p}: unknown architecture {a!r}; expected one of {ARCHS}")
    cfg["fractions"] = [check_fraction(f) for f in cfg["fractions"]]
    if not cfg["seeds"]:
        raise ValueError(f"{p}: seeds is empty")
    return cfg


def finetune_steps(cfg: dict, fraction: float) -> int:
    """``finetune.steps`` is one number or a mapping fraction -> steps."""
    steps = cfg["finetune"]["steps"]
    if isinstance(steps, dict):
        for k, v in steps.items():
            if abs(float(k) - fraction) < 1e-9:
                return int(v)
        raise ValueError(f"{cfg['config_path']}: finetune.steps has no entry for fraction {fraction}")
    return int(steps)
