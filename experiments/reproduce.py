"""Run a config's whole grid through a submitit executor, then collect the table.

Pretraining runs go first (one per pretext task); each fine-tuning run starts as soon as the
encoder it needs exists; the collector runs last. A run's state comes from the trainers' own
run identity (``experiments.state``): finished runs are skipped, so running the same command
again only collects; a run folder with other settings is moved aside and run afresh; a run that
another process is working on is left to it (dependent runs wait for it). Interrupting loses at
most the runs in flight, and those resume from their checkpoints. At most
``cores // cpus_per_job`` jobs run at once on this machine. ``--executor slurm`` submits
everything at once instead (``slurm.submit_grid``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from tqdm import tqdm

import scans
from atomicio import write_json
from engine import ConfigError, lock_holder
from slurm import TrainJob, make_executor, submit_grid

from .collect import collect
from .grid import Run, finetune_runs, pretrain_runs, split_path
from .state import move_aside, run_state


def ensure_split(cfg: dict) -> dict:
    """Write the config's split file (same seeds -> same bytes), keeping an identical existing one."""
    cases = [c for c in scans.find_cases(cfg["data"]) if c.label is not None]
    if not cases:
        raise scans.ScanError(cfg["data"], "no labelled cases")
    splits = scans.make_splits([c.case_id for c in cases], cfg["split"]["test_fraction"], cfg["split"]["seed"],
                               cfg["fractions"], cfg["seeds"], dataset=Path(cfg["data"]).name)
    path = Path(split_path(cfg))
    if path.is_file():
        old = scans.load_splits(path)
        old.pop("_path", None)
        if old != splits:
            raise ConfigError(f"{path} holds a different split than the config asks for; remove {cfg['runs_dir']} "
                              "or give the config another name")
        return splits
    write_json(path, splits)
    return splits


def max_parallel(cfg: dict, executor: str) -> int:
    if executor == "debug":
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, int(cfg["cpus_per_job"])))


def describe(run: Run, res: dict | None) -> str:
    if run.kind == "pretrain":
        acc = (res or {}).get("final_accuracy")
        return f"pretrain {run.cell['task']}: pretext accuracy {acc:.3f}" if acc is not None else f"pretrain {run.cell['task']}"
    d = (res or {}).get("mean_dice")
    wall = (res or {}).get("wall_time_s")
    return (f"{run.key}: test Dice {d:.3f}" if d is not None else run.key) + (f" ({wall:.0f} s)" if wall else "")


def schedule(runs: list[Run], executor, parallel: int, threads: int, elsewhere: list[Run] = ()) -> dict[str, str]:
    """Run ``runs`` respecting ``needs``, at most ``parallel`` at once; runs that need one of
    ``elsewhere`` (running in another process) wait for it. Returns failed key -> reason."""
    pending = list(runs)
    in_flight: dict[str, tuple] = {}
    waiting = {r.key: r for r in elsewhere}
    known = {r.key for r in runs} | set(waiting)
    done: set[str] = set()
    failed: dict[str, str] = {}
    bar = tqdm(total=len(runs), desc="grid", unit="run", dynamic_ncols=True)
    try:
        while pending or in_flight:
            for key, r in list(waiting.items()):
                state = run_state(r)
                if state != "running":
                    del waiting[key]
                    if state == "done":
                        done.add(key)
                    else:
                        failed[key] = "stopped elsewhere without finishing"
            for run in list(pending):
                if len(in_flight) >= parallel:
                    break
                blocked = [n for n in run.needs if n in failed]
                if blocked:
                    failed[run.key] = f"needs {blocked[0]}, which failed ({failed[blocked[0]]})"
                    pending.remove(run)
                    bar.update(1)
                    bar.write(f"FAILED   {run.key}: {failed[run.key]}")
                    continue
                if all(n in done or n not in known for n in run.needs):
                    job = executor.submit(TrainJob(run.kind, threads), list(run.argv))
                    in_flight[run.key] = (job, run, time.time())
                    pending.remove(run)
                    bar.write(f"started  {run.key}  (job {job.job_id}, log {getattr(job, 'paths', None) and job.paths.stdout})")
            for key, (job, run, t0) in list(in_flight.items()):
                if not job.done():
                    continue
                del in_flight[key]
                bar.update(1)
                try:
                    res = job.result()
                except Exception as e:  # the job's own traceback is in its log
                    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    failed[key] = f"{reason} (log: {job.paths.stderr})"
                    bar.write(f"FAILED   {key}: {failed[key]}")
                    continue
                if res.get("status") == "running elsewhere":
                    waiting[key] = run
                    bar.write(f"elsewhere {key}: {res['detail']}")
                    continue
                done.add(key)
                bar.write(f"finished {describe(run, res)}  [{time.time() - t0:.0f} s]")
            if in_flight or waiting:
                time.sleep(0.5)
    except KeyboardInterrupt:
        for job, run, _ in in_flight.values():
            job.cancel(check=False)
        bar.write("interrupted: runs in flight were stopped (they resume from their checkpoints); finished runs are kept")
        raise
    finally:
        bar.close()
    return failed


def plan(cfg: dict) -> tuple[list[Run], list[Run], list[Run]]:
    """(all runs, runs to run here, runs running elsewhere); moves aside folders with other settings.

    Pretraining runs come first, so a fine-tuning run whose encoder was moved aside is seen
    with the missing encoder (and so as another run) rather than with the stale one.
    """
    runs = pretrain_runs(cfg) + finetune_runs(cfg)
    todo, elsewhere = [], []
    for r in runs:
        state = run_state(r)
        if state == "other":
            print(f"{r.out} holds a run with other settings; moved to {move_aside(r)}")
            state = "new"
        if state == "running":
            elsewhere.append(r)
            print(f"running elsewhere: {r.key} (process {lock_holder(r.out)} holds {r.out})")
        elif state != "done":
            todo.append(r)
    return runs, todo, elsewhere


def reproduce(cfg: dict, executor: str = "local", profile: str | None = None) -> dict:
    """Bring every run of ``cfg`` to done, then collect. Returns {"failed": {...}, "results": dir}."""
    runs_dir = Path(cfg["runs_dir"])
    runs_dir.mkdir(parents=True, exist_ok=True)
    ensure_split(cfg)
    runs, todo, elsewhere = plan(cfg)
    print(f"{cfg['name']}: {len(runs)} runs, {len(runs) - len(todo) - len(elsewhere)} already finished, "
          f"{len(elsewhere)} running elsewhere, {len(todo)} to run")
    if executor == "slurm":
        return submit_grid(cfg, todo, profile, collect_fn=collect)
    failed = {}
    if todo:
        parallel = max_parallel(cfg, executor)
        ex = make_executor(executor, runs_dir / "jobs", timeout_min=int(cfg["timeout_min"]))
        failed = schedule(todo, ex, parallel, int(cfg["cpus_per_job"]), elsewhere)
    results = collect(cfg)
    if failed:
        print(f"{len(failed)} runs failed:")
        for k, why in failed.items():
            print(f"  {k}: {why}")
    return {"failed": failed, "results": str(results)}
