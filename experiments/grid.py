"""The grid of a config: its pretraining runs, one per pretext task (per architecture for a task that
trains a whole segmenter), pretraining budget and pretraining seed; and its fine-tuning runs, one per
architecture x init x label fraction x replicate (x budget), where a replicate is a (label seed,
training seed) pair. Every init of a replicate shares the labelled volumes, the training seed and so
the decoder's initial weights, data order and augmentation: inits are compared in pairs. A pretrained
init's replicate takes the encoder of pretraining seed ``pretrain.seeds[label seed % len(seeds)]``, so
the replicates of a cell are spread over the pretraining runs and nested in them.

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
from pretrain import TASKS

from .config import BASE_INITS, finetune_steps, normalization_flags, per_fraction, seeds_of


@dataclass(frozen=True)
class Run:
    kind: str                    # "pretrain" or "finetune"
    key: str                     # unique, readable: "pretrain/rotation/P0", "unet/simclr/frac0.1/L0_S1_P0"
    out: str                     # run folder
    argv: tuple[str, ...]        # arguments of python -m pretrain / finetune
    cell: dict = field(default_factory=dict, hash=False, compare=False)  # task, or arch/init/fraction/seeds
    needs: tuple[str, ...] = ()  # keys of runs that must finish first


def split_path(cfg: dict) -> str:
    return str(Path(cfg["runs_dir"]) / "splits.json")


def replicates(cfg: dict, arch: str, fraction: float) -> list[tuple[int, int]]:
    """(label seed, training seed) pairs of an architecture at a fraction: every label seed with every training
    seed."""
    return list(itertools.product(seeds_of(cfg, "label_seeds", arch, fraction),
                                  seeds_of(cfg, "train_seeds", arch, fraction)))


def all_label_seeds(cfg: dict) -> list[int]:
    return sorted({l for a in cfg["archs"] for f in cfg["fractions"] for l, _ in replicates(cfg, a, f)})


def pretrain_seed(cfg: dict, label_seed: int) -> int:
    """The pretraining seed whose encoder the replicates of ``label_seed`` fine-tune."""
    seeds = cfg["pretrain"]["seeds"]
    return seeds[label_seed % len(seeds)]


def pretrain_name(task: str, arch: str | None, budget: int) -> str:
    """``rotation``, ``restore-unet``, ``simclr@4x``: a pretraining setting, as keys and folders name it."""
    return task + (f"-{arch}" if arch else "") + (f"@{budget}x" if budget != 1 else "")


def pretrain_archs(cfg: dict, task: str) -> list[str | None]:
    """The architectures a task is pretrained for: each of the config's for a whole-network task, else none."""
    return list(cfg["archs"]) if TASKS[task].per_arch else [None]


def pretrain_argv(cfg: dict, task: str, arch: str | None, budget: int, seed: int) -> list[str]:
    """The options that define a pretraining run (all but its folder)."""
    pcfg = cfg["pretrain"]
    task_args = dict(pcfg["task_args"].get(task, {}))
    epochs = task_args.pop("epochs", pcfg["epochs"]) * budget
    return ["--task", task, "--data", cfg["data"], "--split", split_path(cfg), "--encoder", cfg["encoder"],
            "--epochs", str(epochs), "--batch-size", str(pcfg["batch_size"]), "--seed", str(seed),
            "--device", cfg["device"], *(["--arch", arch] if arch else []), *normalization_flags(cfg),
            *as_flags(pcfg["args"]), *as_flags(task_args)]


def pretrain_out(cfg: dict, task: str, arch: str | None = None, budget: int = 1, seed: int = 0) -> str:
    """``<pretrain_dir>/<task>[-<arch>][@<budget>x]/<encoder>_s<seed>_<digest>``: the digest covers what defines
    the run (data, split, every option), so two configs share a pretraining run exactly when they would make
    the same one."""
    argv = pretrain_argv(cfg, task, arch, budget, seed)
    at = argv.index("--split")  # the split file's path is the config's; its settings stand for its content
    defining = {"data": cfg["data"], "split": cfg["split"], "groups": cfg.get("groups"), "argv": argv[2:at] + argv[at + 2:]}
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]
    return str(Path(cfg["pretrain_dir"]) / pretrain_name(task, arch, budget) / f"{cfg['encoder']}_s{seed}_{digest}")


def pretrain_runs(cfg: dict) -> list[Run]:
    runs = []
    for task in cfg["tasks"]:
        for arch in pretrain_archs(cfg, task):
            for budget in cfg["pretrain"]["budgets"]:
                for seed in cfg["pretrain"]["seeds"]:
                    out = pretrain_out(cfg, task, arch, budget, seed)
                    argv = pretrain_argv(cfg, task, arch, budget, seed) + ["--out", out]
                    runs.append(Run("pretrain", f"pretrain/{pretrain_name(task, arch, budget)}/P{seed}", out, tuple(argv),
                                    {"task": task, "arch": arch, "budget": budget, "seed": seed,
                                     "encoder": cfg["encoder"]}))
    return runs


def init_file(cfg: dict, init: str, arch: str, budget: int, seed: int) -> tuple[str, str]:
    """(the --init file, the key of the pretraining run that writes it) of a pretrained init: a whole-network
    task's network.pt for this architecture, else the encoder.pt."""
    run_arch = arch if TASKS[init].per_arch else None
    out = Path(pretrain_out(cfg, init, run_arch, budget, seed))
    return str(out / ("network.pt" if run_arch else "encoder.pt")), f"pretrain/{pretrain_name(init, run_arch, budget)}/P{seed}"


def finetune_runs(cfg: dict) -> list[Run]:
    fcfg = cfg["finetune"]
    runs = []
    for arch in cfg["archs"]:
        for init in cfg["inits"]:
            base = init in BASE_INITS
            own = fcfg["init_args"].get(arch, {}).get(init, {})
            for budget in ([1] if base else cfg["pretrain"]["budgets"]):
                # an init's own recipe names its folders, so configs that differ only in it can share a runs_dir
                name = init + (f"@{budget}x" if budget != 1 else "") + "".join(f"+{k}{v}" for k, v in sorted(own.items()))
                for frac in cfg["fractions"]:
                    for label_seed, seed in replicates(cfg, arch, frac):
                        p = None if base else pretrain_seed(cfg, label_seed)
                        rep = f"L{label_seed}_S{seed}" + ("" if base else f"_P{p}")
                        out = str(Path(cfg["runs_dir"]) / arch / name / f"frac{frac:g}" / rep)
                        if base:
                            init_arg, needs = init, ()
                        else:
                            init_arg, pre_key = init_file(cfg, init, arch, budget, p)
                            needs = (pre_key,)
                        argv = ["--arch", arch, "--encoder", cfg["encoder"], "--init", init_arg, "--fraction", str(frac),
                                "--label-seed", str(label_seed), "--seed", str(seed), "--data", cfg["data"],
                                "--split", split_path(cfg), "--out", out, "--device", cfg["device"],
                                "--steps", str(finetune_steps(cfg, frac)),
                                "--batch-size", str(per_fraction(fcfg["batch_size"], frac,
                                                                 f"{cfg['config_path']}: finetune.batch_size")),
                                *normalization_flags(cfg), *as_flags(fcfg["args"]), *as_flags(fcfg["arch_args"].get(arch, {})),
                                *as_flags(own)]
                        if init == "imagenet":
                            argv += ["--imagenet-weights", cfg["imagenet_weights"]]
                        cell = {"arch": arch, "init": init, "budget": budget, "fraction": frac, "label_seed": label_seed,
                                "seed": seed, "pretrain_seed": p}
                        runs.append(Run("finetune", f"{arch}/{name}/frac{frac:g}/{rep}", out, tuple(argv), cell, needs))
    return runs
