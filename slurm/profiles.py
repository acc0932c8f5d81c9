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
  signal_delay_s     seconds before the time limit at which SLURM sends USR2 (the run saves, submitit requeues)
  max_requeues       how many times a job may requeue itself after reaching its time limit (default 10;
                     submitit's own default, 3, is too few for a long pretraining with a short limit)
  setup              shell lines run before each job (e.g. module load, source .venv/bin/activate)
  sbatch             extra sbatch parameters, e.g. {exclude: node12, mail-type: FAIL}
  collector          fields that differ for the grid's collector job (a short CPU job by default:
                     no GPU, 1 CPU), e.g. {partition: cpu} or, where a GPU partition requires one,
                     {gpus_per_node: 1}

The job time limit is ``time_min``, unless a grid's config sets ``timeout_min``, which wins.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from engine import ConfigError

FIELDS = ("partition", "account", "qos", "constraint", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task",
          "mem_gb", "time_min", "array_parallelism", "signal_delay_s", "max_requeues", "setup", "sbatch", "collector")
COLLECTOR_FIELDS = ("partition", "account", "qos", "constraint", "gpus_per_node", "cpus_per_task", "mem_gb", "time_min",
                    "setup", "sbatch")
POSITIVE = ("nodes", "tasks_per_node", "cpus_per_task", "time_min", "array_parallelism")


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
    collector = prof.get("collector") or {}
    if not isinstance(collector, dict) or set(collector) - set(COLLECTOR_FIELDS):
        raise ConfigError(f"{p}: collector is a mapping of some of {list(COLLECTOR_FIELDS)}, got {collector!r}")
    for where, fields in (("", prof), ("collector.", collector)):
        for k in POSITIVE + ("gpus_per_node", "mem_gb", "signal_delay_s", "max_requeues"):
            v = fields.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < (1 if k in POSITIVE else 0)):
                raise ConfigError(f"{p}: {where}{k} must be a number >= {1 if k in POSITIVE else 0}, got {v!r}")
    return prof


def collector_profile(prof: dict) -> dict:
    """The collector job's profile: the cluster's, with no GPU and 1 CPU, then the profile's ``collector`` fields."""
    out = {k: v for k, v in prof.items() if k != "collector"}
    return {**out, "gpus_per_node": 0, "cpus_per_task": 1, **(prof.get("collector") or {})}


def slurm_parameters(prof: dict, time_min: int | None = None, gpus: int | None = None) -> dict:
    """AutoExecutor.update_parameters(...) keywords for a profile. ``time_min`` (a grid config's
    ``timeout_min``) overrides the profile's ``time_min``; ``gpus`` overrides ``gpus_per_node``."""
    g = prof.get("gpus_per_node", 0) if gpus is None else gpus
    params = {
        "timeout_min": int(time_min or prof.get("time_min") or 120),
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


def pretrain_world_size(prof: dict) -> int:
    """Processes of a pretraining job with this profile (nodes x tasks per node: one per GPU)."""
    params = slurm_parameters(prof)
    return params["nodes"] * params["tasks_per_node"]
