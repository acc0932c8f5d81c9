"""The grid of a config: one pretraining run per pretext task, and one fine-tuning run per
architecture x init x label fraction x replicate, where a replicate is a (label seed, training
seed) pair. Every init of a replicate shares the labelled volumes, the training seed and so the
decoder's initial weights, data order and augmentation: inits are compared in pairs.

Each run is a command line of ``python -m pretrain`` / ``python -m finetune`` and a run folder.
Pretraining runs live in ``pretrain_dir`` (shared by configs: a folder name carries a digest of
everything that defines the run, so configs with the same data, split and pretraining settings
reuse one encoder)."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from engine import as_flags

from .config import BASE_INITS, finetune_steps, normalization_flags, per_fraction


@dataclass(frozen=True)
class Run:
    kind: str                    # "pretrain" or "finetune"
    key: str                     # unique, readable: "pretrain/rotation", "unet/simclr/frac0.1/L0_S1"
    out: str                     # run folder
    argv: tuple[str, ...]        # arguments of python -m pretrain / finetune
    cell: dict = field(default_factory=dict, hash=False, compare=False)  # task, or arch/init/fraction/seeds
    needs: tuple[str, ...] = ()  # keys of runs that must finish first


def split_path(cfg: dict) -> str:
    return str(Path(cfg["runs_dir"]) / "splits.json")


def replicates(cfg: dict, fraction: float) -> list[tuple[int, int]]:
    """(label seed, training seed) pairs of a fraction: every label seed with every training seed."""
    where = cfg["config_path"]
    return list(itertools.product(per_fraction(cfg["label_seeds"], fraction, f"{where}: label_seeds"),
                                  per_fraction(cfg["train_seeds"], fraction, f"{where}: train_seeds")))


def all_label_seeds(cfg: dict) -> list[int]:
    return sorted({l for f in cfg["fractions"] for l, _ in replicates(cfg, f)})


def pretrain_out(cfg: dict, task: str) -> str:
    """``<pretrain_dir>/<task>_<encoder>_<digest>``: the digest covers what defines the run."""
    defining = {"data": cfg["data"], "split": cfg["split"], "groups": cfg.get("groups"), "encoder": cfg["encoder"],
                "device": cfg["device"], "epochs": cfg["pretrain"]["epochs"], "batch_size": cfg["pretrain"]["batch_size"],
                "args": cfg["pretrain"]["args"], "task_args": cfg["pretrain"]["task_args"].get(task, {})}
    if normalization_flags(cfg):  # only when not the default, so existing encoders keep their folders
        defining["normalization"] = normalization_flags(cfg)
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]
    return str(Path(cfg["pretrain_dir"]) / f"{task}_{cfg['encoder']}_{digest}")


def pretrain_runs(cfg: dict) -> list[Run]:
    runs = []
    pcfg = cfg["pretrain"]
    for task in cfg["tasks"]:
        out = pretrain_out(cfg, task)
        argv = ["--task", task, "--data", cfg["data"], "--split", split_path(cfg), "--encoder", cfg["encoder"],
                "--epochs", str(pcfg["epochs"]), "--batch-size", str(pcfg["batch_size"]), "--out", out,
                "--device", cfg["device"], *normalization_flags(cfg), *as_flags(pcfg["args"]),
                *as_flags(pcfg["task_args"].get(task, {}))]
        runs.append(Run("pretrain", f"pretrain/{task}", out, tuple(argv), {"task": task, "encoder": cfg["encoder"]}))
    return runs


def finetune_runs(cfg: dict) -> list[Run]:
    fcfg = cfg["finetune"]
    runs = []
    for arch in cfg["archs"]:
        for init in cfg["inits"]:
            for frac in cfg["fractions"]:
                for label_seed, seed in replicates(cfg, frac):
                    rep = f"L{label_seed}_S{seed}"
                    out = str(Path(cfg["runs_dir"]) / arch / init / f"frac{frac:g}" / rep)
                    if init in BASE_INITS:
                        init_arg, needs = init, ()
                    else:
                        init_arg, needs = str(Path(pretrain_out(cfg, init)) / "encoder.pt"), (f"pretrain/{init}",)
                    argv = ["--arch", arch, "--encoder", cfg["encoder"], "--init", init_arg, "--fraction", str(frac),
                            "--label-seed", str(label_seed), "--seed", str(seed), "--data", cfg["data"],
                            "--split", split_path(cfg), "--out", out, "--device", cfg["device"],
                            "--steps", str(finetune_steps(cfg, frac)),
                            "--batch-size", str(per_fraction(fcfg["batch_size"], frac, f"{cfg['config_path']}: finetune.batch_size")),
                            *normalization_flags(cfg), *as_flags(fcfg["args"]), *as_flags(fcfg["arch_args"].get(arch, {}))]
                    if init == "imagenet":
                        argv += ["--imagenet-weights", cfg["imagenet_weights"]]
                    cell = {"arch": arch, "init": init, "fraction": frac, "label_seed": label_seed, "seed": seed}
                    runs.append(Run("finetune", f"{arch}/{init}/frac{frac:g}/{rep}", out, tuple(argv), cell, needs))
    return runs
