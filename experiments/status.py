"""Each run's state: done / running / partial (checkpoint, not running) / pending / failed / other settings."""
from __future__ import annotations

from pathlib import Path

from engine import lock_holder, read_json
from slurm import RESULT, job_states, read_jobs

from .grid import finetune_runs, pretrain_runs
from .state import run_state


def run_states(cfg: dict) -> list[tuple[str, str, str]]:
    """(key, state, detail) for every run of the grid."""
    jobs = read_jobs(cfg["runs_dir"])
    states = job_states(jobs) if jobs else {}
    out = []
    for run in pretrain_runs(cfg) + finetune_runs(cfg):
        job = jobs.get(run.key, {})
        sstate = states.get(run.key, "")
        state = run_state(run)
        if state == "done":
            d = read_json(Path(run.out) / RESULT[run.kind]) or {}
            detail = f"Dice {d['mean_dice']:.3f}" if "mean_dice" in d else f"accuracy {d.get('final_accuracy') or 0:.3f}"
            out.append((run.key, "done", detail))
        elif state == "running":
            where = f"job {job.get('job_id')}, log {job.get('stdout')}" if sstate in ("RUNNING", "COMPLETING") else "elsewhere"
            out.append((run.key, "running", f"process {lock_holder(run.out)} ({where})"))
        elif state == "other":
            out.append((run.key, "other", f"{run.out} holds a run with other settings (reproduce moves it aside)"))
        elif sstate in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "COMPLETED", "PREEMPTED"):
            out.append((run.key, "failed", f"job {job.get('job_id')} {sstate}, log {job.get('stderr')}"))
        elif sstate in ("PENDING", "REQUEUED", "CONFIGURING", "RUNNING", "COMPLETING"):
            out.append((run.key, "pending", f"job {job.get('job_id')} {sstate}"))
        elif state == "partial":
            out.append((run.key, "partial", f"started in {run.out}; runs again from its checkpoint"))
        else:
            out.append((run.key, "pending", "not started"))
    return out


def print_status(cfg: dict) -> int:
    rows = run_states(cfg)
    width = max(len(k) for k, _, _ in rows)
    for key, state, detail in rows:
        print(f"{key:<{width}}  {state:<8} {detail}")
    counts = {s: sum(1 for _, st, _ in rows if st == s) for s in ("done", "running", "pending", "partial", "failed", "other")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 0
