"""Submitting to SLURM through submitit: one pretraining or fine-tuning run, or a whole grid.

One run (``python -m slurm submit pretrain|finetune --profile P ARGS...``) is one job whose
logs go to ``RUN_DIR/slurm/``; a pretraining job with several GPUs per node runs as DDP (one
submitit task per GPU).

A grid (``python -m experiments reproduce --executor slurm``) is submitted at once and the
submitting process may exit: one job per pretext task, then fine-tuning job arrays that wait
for their encoder (``afterok``), then a collector job (``afterany``) that builds the table
from whatever finished. Job ids and log paths go to ``RUNS_DIR/slurm_jobs.json``
(:data:`JOBS_FILE`), which ``python -m experiments status`` reads.
"""
from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

from atomicio import write_json

from .executors import make_executor
from .jobs import TrainJob
from .profiles import collector_profile, load_profile

JOBS_FILE = "slurm_jobs.json"


def _entry(job, folder: Path) -> dict:
    return {"job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "folder": str(folder)}


def submit_run(kind: str, argv: list[str], profile: str, out: str, name: str) -> dict:
    """Submit one ``python -m pretrain|finetune ARGV`` run as a job with ``profile``; return its entry."""
    prof = load_profile(profile)
    folder = Path(out) / "slurm"
    gpus = None if kind == "pretrain" else min(1, int(prof.get("gpus_per_node") or 0))
    ex = make_executor("slurm", folder, profile=prof, job_name=f"{kind}-{name}", gpus=gpus)
    if kind == "finetune":
        ex.update_parameters(tasks_per_node=1, nodes=1)
    job = ex.submit(TrainJob(kind), list(argv))
    return _entry(job, folder)


def _extra_sbatch(prof: dict) -> dict:
    return {str(k).replace("-", "_"): v for k, v in (prof.get("sbatch") or {}).items()}


def read_jobs(runs_dir: str | Path) -> dict:
    """key -> {"job_id", "stdout", "stderr", "folder"} of a submitted grid ({} if none)."""
    try:
        return json.loads((Path(runs_dir) / JOBS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def submit_grid(cfg: dict, todo: list, profile: str, collect_fn=None) -> dict:
    """Submit the unfinished runs of a grid with dependencies, plus the collector; do not wait.
    The config's ``timeout_min`` (when set) is every training job's time limit."""
    prof = load_profile(profile)
    runs_dir = Path(cfg["runs_dir"])
    folder = runs_dir / "slurm"
    gpus = int(prof.get("gpus_per_node") or 0)
    limit = cfg.get("timeout_min")
    registry: dict = {}
    pre_jobs: dict[str, str] = {}
    for run in [r for r in todo if r.kind == "pretrain"]:
        ex = make_executor("slurm", folder, limit, profile=prof, job_name=f"{cfg['name']}-{run.key.replace('/', '-')}")
        job = ex.submit(TrainJob("pretrain"), list(run.argv))
        pre_jobs[run.key] = str(job.job_id)
        registry[run.key] = _entry(job, folder)
        print(f"submitted {run.key}: job {job.job_id}")
    groups: dict[tuple, list] = {}
    for run in [r for r in todo if r.kind == "finetune"]:
        groups.setdefault(tuple(pre_jobs[n] for n in run.needs if n in pre_jobs), []).append(run)
    array_ids = []
    for deps, group in groups.items():
        ex = make_executor("slurm", folder, limit, profile=prof, job_name=f"{cfg['name']}-finetune", gpus=min(1, gpus))
        extra = _extra_sbatch(prof)
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
        cprof = collector_profile(prof)
        ex = make_executor("slurm", folder, profile=cprof, job_name=f"{cfg['name']}-collect")
        after = array_ids + list(pre_jobs.values())
        extra = _extra_sbatch(cprof)
        if after:
            extra["dependency"] = "afterany:" + ":".join(after)
        ex.update_parameters(tasks_per_node=1, nodes=1, slurm_additional_parameters=extra)
        job = ex.submit(collect_fn, cfg)
        registry["collect"] = _entry(job, folder)
        print(f"submitted the collector: job {job.job_id}" + (f" after {extra['dependency']}" if after else ""))
    write_json(runs_dir / JOBS_FILE, {**read_jobs(runs_dir), **registry})
    print(f"job ids and logs: {runs_dir / JOBS_FILE}; follow with: python -m experiments status --config {cfg['config_path']}")
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

