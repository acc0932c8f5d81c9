"""SLURM profiles: a small YAML file per cluster, mapped onto submitit's AutoExecutor parameters.

Fields (all optional):
  partition          SLURM partition (-p)
  account, qos       --account / --qos
  constraint         --constraint (e.g. a GPU model)
  nodes              nodes per job (multi-node DDP), default 1
  gpus_per_node      GPUs per node; pretraining runs one process (submitit task) per GPU
  tasks_per_node     processes per node; default = gpus_per_node (or 1 without GPUs)
  cpus_per_task      CPU cores per process (DataLoader workers + main)
  mem_gb             memory per node in GB
  time_min           time limit per job in minutes (jobs requeue themselves when it runs out)
  array_parallelism  at most this many fine-tuning array tasks at once
  signal_delay_s     seconds before the time limit at which SLURM sends USR2 (submitit checkpoints + requeues)
  setup              shell lines run before each job (e.g. module load, source .venv/bin/activate)
  sbatch             extra sbatch parameters, e.g. {exclude: node12, mail-type: FAIL}
"""
from __future__ import annotations

from pathlib import Path

import yaml

from engine import ConfigError

FIELDS = ("partition", "account", "qos", "constraint", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task",
          "mem_gb", "time_min", "array_parallelism", "signal_delay_s", "setup", "sbatch")


def load_profile(path: str | Path) -> dict:
    """Read and check a profile YAML (ConfigError naming the file on any problem)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: SLURM profile does not exist (see slurm/profiles/example-gpu.yaml)")
    try:
        prof = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(prof, dict):
        raise ConfigError(f"{p}: a SLURM profile is a mapping of fields, got {type(prof).__name__}")
    unknown = sorted(set(prof) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{p}: unknown profile fields {unknown}; expected some of {list(FIELDS)}")
    return prof


def slurm_parameters(prof: dict, timeout_min: int = 120, gpus: int | None = None) -> dict:
    """AutoExecutor.update_parameters(...) keywords for a profile. ``gpus`` overrides gpus_per_node."""
    g = prof.get("gpus_per_node", 0) if gpus is None else gpus
    params = {
        "timeout_min": int(prof.get("time_min", timeout_min)),
        "nodes": int(prof.get("nodes", 1)),
        "tasks_per_node": int(prof.get("tasks_per_node", max(1, g))),
        "cpus_per_task": int(prof.get("cpus_per_task", 2)),
        "slurm_signal_delay_s": int(prof.get("signal_delay_s", 120)),
        "slurm_array_parallelism": int(prof.get("array_parallelism", 32)),
    }
    if g:
        params["gpus_per_node"] = int(g)
    if "mem_gb" in prof:
        params["mem_gb"] = float(prof["mem_gb"])
    for field in ("partition", "account", "qos", "constraint"):
        if prof.get(field):
            params[f"slurm_{field}"] = str(prof[field])
    if prof.get("setup"):
        params["slurm_setup"] = list(prof["setup"])
    if prof.get("sbatch"):
        params["slurm_additional_parameters"] = {str(k).replace("-", "_"): v for k, v in prof["sbatch"].items()}
    return params
