"""Run a config's whole grid through a submitit executor, then collect the table.

Pretraining runs go first (one per pretext task); each fine-tuning run starts as soon as the
encoder it needs exists; the collector runs last. Finished runs (same settings) are skipped,
so running the same command again only collects; interrupting loses at most the runs in
flight, and those resume from their checkpoints. At most ``cores // cpus_per_job`` jobs run at
once on this machine. ``--executor slurm`` submits everything at once instead (slurm/submit.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from tqdm import tqdm

import scans
from slurm import TrainJob, make_executor

from .grid import Run, finetune_runs, pretrain_runs, split_path
from .state import has_other_settings, is_done, move_aside


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
            raise ValueError(f"{path} holds a different split than the config asks for; remove {cfg['runs_dir']} "
                             "or give the config another name")
        return splits
    scans.write_json_atomic(splits, path)
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


def schedule(runs: list[Run], executor, parallel: int, threads: int) -> dict[str, str]:
    """Run ``runs`` respecting ``needs``, at most ``parallel`` at once. Returns failed key -> reason."""
    pending = list(runs)
    in_flight: dict[str, tuple] = {}
    done: set[str] = set()
    failed: dict[str, str] = {}
    bar = tqdm(total=len(runs), desc="grid", unit="run", dynamic_ncols=True)
    try:
        while pending or in_flight:
            for run in list(pending):
                if len(in_flight) >= parallel:
                    break
                blocked = [n for n in run.needs if n in failed]
                if blocked:
                    failed[run.key] = f"needs {blocked[0]}, which failed"
                    pending.remove(run)
                    bar.update(1)
                    continue
                if all(n in done or n not in {r.key for r in runs} for n in run.needs):
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
                    done.add(key)
                    bar.write(f"finished {describe(run, res)}  [{time.time() - t0:.0f} s]")
                except Exception as e:  # the job's own traceback is in its log
                    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    failed[key] = f"{reason} (log: {job.paths.stderr})"
                    bar.write(f"FAILED   {key}: {failed[key]}")
            if in_flight:
                time.sleep(0.5)
    except KeyboardInterrupt:
        for job, run, _ in in_flight.values():
            job.cancel(check=False)
        bar.write("interrupted: runs in flight were stopped (they resume from their checkpoints); finished runs are kept")
        raise
    finally:
        bar.close()
    return failed


def reproduce(cfg: dict, executor: str = "local", profile: str | None = None) -> dict:
    """Bring every run of ``cfg`` to done, then collect. Returns {"failed": {...}, "results": dir}."""
    from .collect import collect

    runs_dir = Path(cfg["runs_dir"])
    runs_dir.mkdir(parents=True, exist_ok=True)
    ensure_split(cfg)
    runs = pretrain_runs(cfg) + finetune_runs(cfg)
    todo = [r for r in runs if not is_done(r)]
    for r in todo:
        if Path(r.out).exists() and has_other_settings(r):
            print(f"{r.out} holds a run with other settings; moved to {move_aside(r)}")
    print(f"{cfg['name']}: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run")
    if executor == "slurm":
        from slurm.submit import submit_grid
        return submit_grid(cfg, runs, todo, profile, collect_fn=collect)
    failed = {}
    if todo:
        parallel = max_parallel(cfg, executor)
        ex = make_executor(executor, runs_dir / "jobs", timeout_min=int(cfg["timeout_min"]))
        failed = schedule(todo, ex, parallel, int(cfg["cpus_per_job"]))
    results = collect(cfg)
    if failed:
        print(f"{len(failed)} runs failed:")
        for k, why in failed.items():
            print(f"  {k}: {why}")
    return {"failed": failed, "results": str(results)}
