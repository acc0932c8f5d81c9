"""The grid of a config: one pretraining run per pretext task, one fine-tuning run per
init x architecture x label fraction x seed. Each run is a command line of
``python -m pretrain`` / ``python -m finetune`` and a run folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import BASE_INITS, finetune_steps


@dataclass(frozen=True)
class Run:
    kind: str                    # "pretrain" or "finetune"
    key: str                     # unique, readable: "pretrain/rotation", "unet/simclr/frac0.1/seed0"
    out: str                     # run folder
    argv: tuple[str, ...]        # arguments of python -m pretrain / finetune
    cell: dict = field(default_factory=dict, hash=False, compare=False)  # task, or arch/init/fraction/seed
    needs: tuple[str, ...] = ()  # keys of runs that must finish first


def _flags(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif v is False or v is None:
            continue
        elif isinstance(v, (list, tuple)):
            out += [flag, *map(str, v)]
        else:
            out += [flag, str(v)]
    return out


def split_path(cfg: dict) -> str:
    return str(Path(cfg["runs_dir"]) / "splits.json")


def pretrain_runs(cfg: dict) -> list[Run]:
    runs = []
    pcfg = cfg["pretrain"]
    for task in cfg["tasks"]:
        out = str(Path(cfg["runs_dir"]) / "pretrain" / f"{task}_{cfg['encoder']}")
        argv = ["--task", task, "--data", cfg["data"], "--split", split_path(cfg), "--encoder", cfg["encoder"],
                "--epochs", str(pcfg["epochs"]), "--batch-size", str(pcfg["batch_size"]), "--out", out,
                "--device", cfg["device"], *_flags(pcfg["args"]), *_flags(pcfg["task_args"].get(task, {}))]
        runs.append(Run("pretrain", f"pretrain/{task}", out, tuple(argv), {"task": task, "encoder": cfg["encoder"]}))
    return runs


def finetune_runs(cfg: dict) -> list[Run]:
    fcfg = cfg["finetune"]
    runs = []
    for arch in cfg["archs"]:
        for init in cfg["inits"]:
            for frac in cfg["fractions"]:
                for seed in cfg["seeds"]:
                    out = str(Path(cfg["runs_dir"]) / arch / init / f"frac{frac:g}" / f"seed{seed}")
                    if init in BASE_INITS:
                        init_arg, needs = init, ()
                    else:
                        init_arg = str(Path(cfg["runs_dir"]) / "pretrain" / f"{init}_{cfg['encoder']}" / "encoder.pt")
                        needs = (f"pretrain/{init}",)
                    argv = ["--arch", arch, "--encoder", cfg["encoder"], "--init", init_arg, "--fraction", str(frac),
                            "--seed", str(seed), "--data", cfg["data"], "--split", split_path(cfg), "--out", out,
                            "--device", cfg["device"], "--steps", str(finetune_steps(cfg, frac)),
                            "--batch-size", str(fcfg["batch_size"]), *_flags(fcfg["args"]),
                            *_flags(fcfg["arch_args"].get(arch, {}))]
                    if init == "imagenet":
                        argv += ["--imagenet-weights", cfg["imagenet_weights"]]
                    cell = {"arch": arch, "init": init, "fraction": frac, "seed": seed}
                    runs.append(Run("finetune", f"{arch}/{init}/frac{frac:g}/seed{seed}", out, tuple(argv), cell, needs))
    return runs
