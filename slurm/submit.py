"""Submitting to SLURM through submitit: one pretraining job, or a whole transfer-table grid.

The grid is submitted at once and the submitting process may exit: one job per pretext task
(multi-GPU DDP through submitit tasks when the profile has several GPUs), then fine-tuning job
arrays that wait for their encoder (``afterok``), then a collector job (``afterany``) that
builds the table from whatever finished. Job ids and log paths go to
``runs/<name>/slurm_jobs.json``, which ``python -m experiments status`` reads.
"""
from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

from .executors import make_executor
from .jobs import TrainJob
from .profiles import load_profile

REGISTRY = "slurm_jobs.json"


def _argv_without_slurm(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--slurm":
            skip = True
            continue
        if a.startswith("--slurm="):
            continue
        out.append(a)
    return out


def _entry(job, folder: Path) -> dict:
    return {"job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "folder": str(folder)}


def submit_pretrain(args, argv: list[str] | None = None) -> int:
    """``python -m pretrain ... --slurm PROFILE``: submit this run as one job and return."""
    import sys
    prof = load_profile(args.slurm)
    folder = Path(args.out) / "slurm"
    ex = make_executor("slurm", folder, profile=prof, job_name=f"pretrain-{args.task}")
    job = ex.submit(TrainJob("pretrain"), _argv_without_slurm(list(argv if argv is not None else sys.argv[1:])))
    print(f"submitted pretraining job {job.job_id}; logs: {job.paths.stdout}")
    return 0


def _write_registry(runs_dir: Path, new: dict) -> None:
    path = runs_dir / REGISTRY
    reg = {}
    if path.is_file():
        reg = json.loads(path.read_text())
    reg.update(new)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(reg, indent=1, sort_keys=True))
    tmp.replace(path)


def submit_grid(cfg: dict, runs: list, todo: list, profile: str, collect_fn=None) -> dict:
    """Submit the unfinished runs of a grid with dependencies, plus the collector; do not wait."""
    prof = load_profile(profile)
    runs_dir = Path(cfg["runs_dir"])
    folder = runs_dir / "slurm"
    gpus = int(prof.get("gpus_per_node") or 0)
    registry: dict = {}
    pre_jobs: dict[str, str] = {}
    for run in [r for r in todo if r.kind == "pretrain"]:
        ex = make_executor("slurm", folder, profile=prof, job_name=f"{cfg['name']}-{run.key.replace('/', '-')}")
        job = ex.submit(TrainJob("pretrain"), list(run.argv))
        pre_jobs[run.key] = str(job.job_id)
        registry[run.key] = _entry(job, folder)
        print(f"submitted {run.key}: job {job.job_id}")
    ft = [r for r in todo if r.kind == "finetune"]
    groups: dict[tuple, list] = {}
    for run in ft:
        groups.setdefault(tuple(pre_jobs[n] for n in run.needs if n in pre_jobs), []).append(run)
    array_ids = []
    for deps, group in groups.items():
        ex = make_executor("slurm", folder, profile=prof, job_name=f"{cfg['name']}-finetune", gpus=min(1, gpus))
        extra = {**{k.replace("-", "_"): v for k, v in (prof.get("sbatch") or {}).items()}}
        if deps:
            extra["dependency"] = "afterok:" + ":".join(deps)
        ex.update_parameters(tasks_per_node=1, nodes=1, slurm_additional_parameters=extra)
        jobs = ex.map_array(TrainJob("finetune"), [list(r.argv) for r in group])
        for run, job in zip(group, jobs):
            registry[run.key] = _entry(job, folder)
        if jobs:
            array_ids.append(str(jobs[0].job_id).split("_")[0])
            print(f"submitted {len(jobs)} fine-tuning runs as array {array_ids[-1]}" + (f" after {extra['dependency']}" if deps else ""))
    if collect_fn is not None:
        ex = make_executor("slurm", folder, profile=prof, job_name=f"{cfg['name']}-collect", gpus=0)
        after = array_ids + list(pre_jobs.values())
        extra = {**{k.replace("-", "_"): v for k, v in (prof.get("sbatch") or {}).items()}}
        if after:
            extra["dependency"] = "afterany:" + ":".join(after)
        ex.update_parameters(tasks_per_node=1, nodes=1, cpus_per_task=1, slurm_additional_parameters=extra)
        job = ex.submit(collect_fn, cfg)
        registry["collect"] = _entry(job, folder)
        print(f"submitted the collector: job {job.job_id}" + (f" after {extra['dependency']}" if after else ""))
    _write_registry(runs_dir, registry)
    print(f"job ids and logs: {runs_dir / REGISTRY}; follow with: python -m experiments status --config {cfg['config_path']}")
    return {"failed": {}, "submitted": registry}


def _squeue(job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    return {j: states[j] for j in job_ids if j in states}


def job_states(jobs: dict[str, dict]) -> dict[str, str]:
    """key -> SLURM-like state: squeue for live jobs, submitit's result file for finished ones."""
    live = _squeue([v["job_id"] for v in jobs.values()])
    out = {}
    for key, v in jobs.items():
        jid = v["job_id"]
        if jid in live:
            out[key] = live[jid]
            continue
        result = Path(v.get("folder", "")) / f"{jid}_0_result.pkl"
        if result.is_file():
            try:
                with open(result, "rb") as f:
                    status, _ = pickle.load(f)
                out[key] = "COMPLETED" if status == "success" else "FAILED"
            except Exception:
                out[key] = "FAILED"
        else:
            out[key] = "FAILED"  # gone from the queue without a result: killed, cancelled or lost
    return out
