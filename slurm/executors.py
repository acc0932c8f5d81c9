"""submitit executors: ``local`` (processes on this machine), ``debug`` (in-process) and
``slurm`` (sbatch through submitit's AutoExecutor, parameters from a profile YAML)."""
from __future__ import annotations

from pathlib import Path

import submitit

from .profiles import slurm_parameters

EXECUTORS = ("local", "debug", "slurm")


def make_executor(kind: str, folder: str | Path, timeout_min: int | None = None, profile: dict | None = None,
                  job_name: str = "ssl-medseg", gpus: int | None = None):
    """An executor whose jobs log to ``folder`` (``%j`` is the job id). ``timeout_min``: the time limit
    per job (local: 120 when None; SLURM: when None, the profile's ``time_min``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "debug":
        return submitit.DebugExecutor(folder=str(folder))
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=timeout_min or 120)  # submitit's default would kill jobs after 2 minutes
        return ex
    if kind == "slurm":
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm",
                                   slurm_max_num_timeout=int((profile or {}).get("max_requeues", 10)))
        ex.update_parameters(name=job_name, **slurm_parameters(profile or {}, timeout_min, gpus))
        return ex
    raise ValueError(f"unknown executor {kind!r}; expected one of {EXECUTORS}")
