"""Experiment configs (YAML): what the transfer table is made of.

A config names the dataset and split, the encoder, the pretext tasks, the inits, the
architectures, the label fractions, the seeds and the schedules. ``load_config`` checks every
key, so a typo is an error rather than a silently ignored setting.
"""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import yaml

import finetune
import models
import pretrain
import scans
from engine import ConfigError

BASE_INITS = ("random", "imagenet")

DEFAULTS = {
    "name": None,                 # default: the file name without .yaml
    "data": "data/msd_hippocampus",
    "split": {"test_fraction": 0.2, "seed": 0,
              "validation_fraction": None},  # set: evaluate on a validation part of the training pool, not on test
    "encoder": "unet_tiny",
    "tasks": sorted(pretrain.TASKS),  # pretext tasks to pretrain (the registered ones)
    "inits": ["random", "rotation", "jigsaw", "simclr"],
    "imagenet_weights": None,     # local timm weights file; 'imagenet' init needs it
    "archs": sorted(models.ARCHS),
    "fractions": [0.01, 0.1, 1.0],
    "label_seeds": [0],           # which labelled volumes; a list, or fraction -> list (or arch -> either)
    "train_seeds": [0],           # weights, data order, augmentation; a list, or fraction -> list (or arch -> either)
    "groups": None,               # case -> subject JSON map; default: the dataset's protocol.json
    "norm": "percentile",         # per-volume intensity normalisation of pretraining and fine-tuning alike:
    "window": None,               #   percentile, zscore, or ct with window [LEVEL, WIDTH] (python -m finetune --help)
    "device": "auto",
    "runs_dir": None,             # default: runs/<name>
    "pretrain_dir": None,         # default: runs/pretrain beside runs_dir (shared by configs)
    "results_dir": None,          # default: results/<name>
    "cpus_per_job": 2,            # threads per job; jobs at once = cores // cpus_per_job
    "timeout_min": None,          # minutes per job: local jobs are killed after it (default 120); on SLURM the
                                  #   time limit of every training job (default: the profile's time_min)
    "pretrain": {"epochs": 3, "batch_size": 32, "args": {}, "task_args": {},
                 "seeds": [0],             # pretraining seeds: one pretraining run each, the replicates spread over them
                 "budgets": [1]},          # multiples of the epochs: one pretraining run per budget (and seed)
    "finetune": {"steps": 800, "batch_size": 32, "args": {}, "arch_args": {},
                 "init_args": {}},         # {arch: {init: options}}: an init's own fine-tuning recipe
    "embeddings": {"slices": 256},
}


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            raise ConfigError(f"{where}: unknown key {k!r}; expected one of {sorted(base)}")
        out[k] = _merge(base[k], v, f"{where}.{k}") if isinstance(base[k], dict) and base[k] and isinstance(v, dict) else v
    return out


def _check_options(p: Path, where: str, options: dict, parser) -> None:
    known = {a.dest for a in parser._actions}
    for k in options:
        if k not in known:
            raise ConfigError(f"{p}: {where} has unknown option {k!r} (not an option of {parser.prog})")


def load_config(path: str | Path) -> dict:
    """Read and check a config; fill defaults, ``name``, ``runs_dir`` and ``results_dir``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a config is a mapping of keys, got {type(raw).__name__}")
    cfg = _merge(DEFAULTS, raw, str(p))
    cfg["name"] = cfg["name"] or p.stem
    cfg["runs_dir"] = cfg["runs_dir"] or f"runs/{cfg['name']}"
    cfg["results_dir"] = cfg["results_dir"] or f"results/{cfg['name']}"
    cfg["pretrain_dir"] = cfg["pretrain_dir"] or str(Path(cfg["runs_dir"]).parent / "pretrain")
    cfg["config_path"] = str(p)
    for t in cfg["tasks"]:
        if t not in pretrain.TASKS:
            raise ConfigError(f"{p}: unknown pretext task {t!r}; expected one of {sorted(pretrain.TASKS)}")
    _check_options(p, "pretrain.args", cfg["pretrain"]["args"], pretrain.get_args_parser())
    ft_parser = finetune.get_args_parser()
    _check_options(p, "finetune.args", cfg["finetune"]["args"], ft_parser)
    for arch, options in cfg["finetune"]["arch_args"].items():
        _check_options(p, f"finetune.arch_args.{arch}", options, ft_parser)
    general = {a.dest for a in pretrain.get_args_parser()._actions} - {o for t in pretrain.TASKS for o in pretrain.task_options(t)}
    for t, options in cfg["pretrain"]["task_args"].items():
        if t not in cfg["tasks"]:
            raise ConfigError(f"{p}: pretrain.task_args has {t!r}, which is not one of the tasks {cfg['tasks']}")
        own = pretrain.task_options(t)
        for k in options:
            if k not in own and k not in general:
                raise ConfigError(f"{p}: pretrain.task_args.{t} has unknown option {k!r}; {t} takes {own} "
                                  "and the general pretraining options")
    for t in cfg["tasks"]:
        if pretrain.TASKS[t].per_arch and "arch" in cfg["pretrain"]["task_args"].get(t, {}):
            raise ConfigError(f"{p}: pretrain.task_args.{t} sets 'arch'; {t} is pretrained for each of archs {cfg['archs']}")
    for i in cfg["inits"]:
        if i not in BASE_INITS and i not in cfg["tasks"]:
            raise ConfigError(f"{p}: init {i!r} is neither {BASE_INITS} nor one of the pretext tasks {cfg['tasks']}")
    for arch, per_init in cfg["finetune"]["init_args"].items():
        if arch not in cfg["archs"] or not isinstance(per_init, dict):
            raise ConfigError(f"{p}: finetune.init_args is {{arch: {{init: options}}}} for archs {cfg['archs']}, "
                              f"got {arch!r}")
        for init, options in per_init.items():
            if init not in cfg["inits"]:
                raise ConfigError(f"{p}: finetune.init_args.{arch} has {init!r}, which is not one of the inits {cfg['inits']}")
            _check_options(p, f"finetune.init_args.{arch}.{init}", options, ft_parser)
    for key, least in (("seeds", 0), ("budgets", 1)):
        values = cfg["pretrain"][key]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in values) \
                or len(set(values)) != len(values):
            raise ConfigError(f"{p}: pretrain.{key} must be distinct integers >= {least}, got {values!r}")
    if "imagenet" in cfg["inits"]:
        if not cfg["imagenet_weights"]:
            print(f"{p}: no imagenet_weights file given, so the 'imagenet' init is left out")
            cfg["inits"] = [i for i in cfg["inits"] if i != "imagenet"]
        elif not Path(cfg["imagenet_weights"]).is_file():
            raise ConfigError(f"{p}: imagenet_weights file {cfg['imagenet_weights']} does not exist")
    for a in cfg["archs"]:
        if a not in models.ARCHS:
            raise ConfigError(f"{p}: unknown architecture {a!r}; expected one of {sorted(models.ARCHS)}")
    for f in cfg["fractions"]:
        if not 0 < float(f) <= 1:
            raise ConfigError(f"{p}: label fraction must be in (0, 1], got {f}")
    cfg["fractions"] = [float(f) for f in cfg["fractions"]]
    for key in ("label_seeds", "train_seeds"):
        if by_arch(cfg[key]) and set(cfg[key]) != set(cfg["archs"]):
            raise ConfigError(f"{p}: {key} per architecture must name each of {cfg['archs']}, got {sorted(cfg[key])}")
        for a in cfg["archs"]:
            for f in cfg["fractions"]:
                seeds = seeds_of(cfg, key, a, f)
                if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
                    raise ConfigError(f"{p}: {key} for {a} at fraction {f} must be distinct integers >= 0, got {seeds!r}")
    check_normalization(cfg, p)
    if cfg["groups"] and not Path(cfg["groups"]).is_file():
        raise ConfigError(f"{p}: groups file {cfg['groups']} does not exist")
    check_numbers(cfg, p)
    return cfg


def _count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def check_numbers(cfg: dict, p: Path) -> None:
    """Counts and sizes a run cannot do without, checked before anything starts (the runs' other
    options are checked by the trainers themselves, see ``experiments.grid.check_runs``)."""
    if not _count(cfg["cpus_per_job"], 1):
        raise ConfigError(f"{p}: cpus_per_job must be an integer >= 1, got {cfg['cpus_per_job']!r}")
    if cfg["timeout_min"] is not None and not _count(cfg["timeout_min"], 1):
        raise ConfigError(f"{p}: timeout_min must be an integer >= 1 (minutes), got {cfg['timeout_min']!r}")
    if not _count(cfg["embeddings"]["slices"], 1):
        raise ConfigError(f"{p}: embeddings.slices must be an integer >= 1, got {cfg['embeddings']['slices']!r}")
    pre = cfg["pretrain"]
    if not _count(pre["epochs"], 1) or not _count(pre["batch_size"], 1):
        raise ConfigError(f"{p}: pretrain.epochs and pretrain.batch_size must be integers >= 1, "
                          f"got {pre['epochs']!r} and {pre['batch_size']!r}")
    for f in cfg["fractions"]:
        for key, least in (("steps", 1), ("batch_size", 1)):
            value = per_fraction(cfg["finetune"][key], f, f"{p}: finetune.{key}")
            if not _count(value, least):
                raise ConfigError(f"{p}: finetune.{key} for fraction {f} must be an integer >= {least}, got {value!r}")


def check_normalization(cfg: dict, p: Path) -> None:
    """``norm`` / ``window`` are one setting for every run of the grid (an encoder pretrained on other
    intensities would not transfer as it should), so the per-run option blocks may not set them."""
    blocks = {"pretrain.args": cfg["pretrain"]["args"], "finetune.args": cfg["finetune"]["args"],
              **{f"pretrain.task_args.{t}": o for t, o in cfg["pretrain"]["task_args"].items()},
              **{f"finetune.arch_args.{a}": o for a, o in cfg["finetune"]["arch_args"].items()},
              **{f"finetune.init_args.{a}.{i}": o for a, per in cfg["finetune"]["init_args"].items()
                 if isinstance(per, dict) for i, o in per.items()}}
    for where, options in blocks.items():
        for k in ("norm", "window"):
            if k in options:
                raise ConfigError(f"{p}: {where} sets {k!r}; set it at the top of the config instead "
                                  "(it applies to pretraining and fine-tuning alike)")
    if cfg["norm"] not in scans.NORM_PRESETS:
        raise ConfigError(f"{p}: norm must be one of {list(scans.NORM_PRESETS)}, got {cfg['norm']!r}")
    window = cfg["window"]
    if window is not None and (not isinstance(window, list) or len(window) != 2):
        raise ConfigError(f"{p}: window is [LEVEL, WIDTH] in Hounsfield units, got {window!r}")
    try:
        scans.normalization_of(SimpleNamespace(norm=cfg["norm"], window=window))
    except ValueError as e:
        raise ConfigError(f"{p}: {e}".replace("--window", "window").replace("--norm", "norm")) from None


def normalization_flags(cfg: dict) -> list[str]:
    """``--norm`` / ``--window`` for every run's command line; none for the default (percentile)."""
    if cfg["norm"] == "percentile" and not cfg["window"]:
        return []
    return ["--norm", cfg["norm"]] + (["--window", *(f"{float(v):g}" for v in cfg["window"])] if cfg["window"] else [])


def per_fraction(value, fraction: float, where: str):
    """A setting that is one value for every fraction, or a mapping fraction -> value."""
    if isinstance(value, dict):
        for k, v in value.items():
            if abs(float(k) - fraction) < 1e-9:
                return v
        raise ConfigError(f"{where} has no entry for fraction {fraction}")
    return value


def by_arch(value) -> bool:
    """Whether a seeds setting is a mapping architecture -> setting."""
    return isinstance(value, dict) and bool(set(map(str, value)) & set(models.ARCHS))


def seeds_of(cfg: dict, key: str, arch: str, fraction: float) -> list:
    """``label_seeds`` or ``train_seeds`` of an architecture at a fraction: the setting is a list, a mapping
    fraction -> list, or a mapping architecture -> either of those."""
    value, where = cfg[key], f"{cfg['config_path']}: {key}"
    if by_arch(value):
        value, where = value[arch], f"{where}.{arch}"
    return per_fraction(value, fraction, where)


def finetune_steps(cfg: dict, fraction: float) -> int:
    """``finetune.steps`` is one number or a mapping fraction -> steps."""
    return int(per_fraction(cfg["finetune"]["steps"], fraction, f"{cfg['config_path']}: finetune.steps"))
