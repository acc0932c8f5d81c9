"""Each run's state: done / running / partial (checkpoint, not running) / pending / failed."""
from __future__ import annotations

import json
from pathlib import Path

from .grid import finetune_runs, pretrain_runs
from .state import is_done

REGISTRY = "slurm_jobs.json"  # key -> {"job_id", "stdout", "stderr"}, written by slurm/submit.py


def slurm_registry(cfg: dict) -> dict:
    try:
        return json.loads((Path(cfg["runs_dir"]) / REGISTRY).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def run_states(cfg: dict) -> list[tuple[str, str, str]]:
    """(key, state, detail) for every run of the grid."""
    jobs = slurm_registry(cfg)
    states = {}
    if jobs:
        from slurm.submit import job_states
        states = job_states(jobs)
    out = []
    for run in pretrain_runs(cfg) + finetune_runs(cfg):
        job = jobs.get(run.key, {})
        sstate = states.get(run.key, "")
        if is_done(run):
            m = Path(run.out) / ("metrics.json" if run.kind == "finetune" else "summary.json")
            d = json.loads(m.read_text())
            detail = f"Dice {d['mean_dice']:.3f}" if "mean_dice" in d else f"accuracy {d.get('final_accuracy', 0):.3f}"
            out.append((run.key, "done", detail))
        elif sstate in ("RUNNING", "COMPLETING"):
            out.append((run.key, "running", f"job {job.get('job_id')}, log {job.get('stdout')}"))
        elif sstate in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "COMPLETED", "PREEMPTED"):
            out.append((run.key, "failed", f"job {job.get('job_id')} {sstate}, log {job.get('stderr')}"))
        elif sstate in ("PENDING", "REQUEUED", "CONFIGURING"):
            out.append((run.key, "pending", f"job {job.get('job_id')} {sstate}"))
        elif (Path(run.out) / "checkpoint.pt").is_file():
            out.append((run.key, "partial", f"checkpoint in {run.out}; runs again from it"))
        else:
            out.append((run.key, "pending", "not started"))
    return out


def print_status(cfg: dict) -> int:
    rows = run_states(cfg)
    width = max(len(k) for k, _, _ in rows)
    for key, state, detail in rows:
        print(f"{key:<{width}}  {state:<8} {detail}")
    counts = {s: sum(1 for _, st, _ in rows if st == s) for s in ("done", "running", "pending", "partial", "failed")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 0
