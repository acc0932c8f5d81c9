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
import signal
import threading
import time
from pathlib import Path

from tqdm import tqdm

import scans
from atomicio import write_json
from engine import ConfigError, lock_holder
from slurm import TrainChain, load_profile, make_executor, pretrain_world_size, submit_grid
from slurm.jobs import last_line

from .collect import collect
from .grid import Run, all_label_seeds, finetune_runs, pretrain_runs, split_path
from .state import check_runs, move_aside, run_state


def make_split(cfg: dict) -> dict:
    """The config's split. With ``split.validation_fraction``, a validation split for choosing
    recipes: the test set is dropped altogether and the training pool is split again, by
    subject, into a validation set (in the file's ``test``) and a smaller pool."""
    cases = [c for c in scans.find_cases(cfg["data"]) if c.label is not None]
    if not cases:
        raise scans.ScanError(cfg["data"], "no labelled cases")
    groups = scans.load_groups(cfg["groups"]) if cfg["groups"] else scans.load_protocol(cfg["data"]).subjects
    sp, seeds, name = cfg["split"], all_label_seeds(cfg), Path(cfg["data"]).name
    splits = scans.make_splits([c.case_id for c in cases], sp["test_fraction"], sp["seed"], cfg["fractions"], seeds,
                               dataset=name, groups=groups)
    if sp["validation_fraction"]:
        splits = scans.make_splits(splits["train_pool"], sp["validation_fraction"], sp["seed"] + 1, cfg["fractions"],
                                   seeds, dataset=name, groups=groups)
        splits["validation_of"] = {"test_fraction": sp["test_fraction"], "seed": sp["seed"], "test_cases_left_out":
                                   len(cases) - len(splits["test"]) - len(splits["train_pool"])}
    return splits


def ensure_split(cfg: dict) -> dict:
    """Write the config's split file (same settings -> same bytes), keeping an identical existing one."""
    splits = make_split(cfg)
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


def expected_cost(run: Run) -> float:
    """A run's relative cost for ordering: steps x batch size, times 1.4 for a TransUNet (measured on CPU)."""
    value = lambda flag: int(run.argv[run.argv.index(flag) + 1]) if flag in run.argv else 1  # noqa: E731
    return value("--steps") * value("--batch-size") * (1.4 if run.cell.get("arch") == "transunet" else 1.0)


class Schedule:
    """Runs ``runs`` respecting ``needs``, at most ``parallel`` jobs at once; runs that need one of ``elsewhere``
    (running in another process) wait for it.

    A pretraining run is a job of its own; ready fine-tuning runs go in chains of up to ``chain`` runs per job
    (``slurm.TrainChain``: one process, data read once), shorter as the grid drains so the workers finish
    together. Its state: the runs not yet started (``pending``), the jobs in flight, the runs other processes
    work on (``waiting``), and the keys that are ``done`` or ``failed`` (with the reason)."""

    def __init__(self, runs: list[Run], executor, parallel: int, threads: int, elsewhere: list[Run] = (), chain: int = 6):
        self.executor, self.parallel, self.threads, self.chain = executor, parallel, threads, chain
        self.pending = list(runs)
        self.in_flight: dict[int, tuple] = {}  # id(job) -> (job, its runs, start time)
        self.waiting = {r.key: r for r in elsewhere}
        self.known = {r.key for r in runs} | set(self.waiting)
        self.done: set[str] = set()
        self.failed: dict[str, str] = {}
        self.bar = tqdm(total=len(runs), desc="grid", unit="run", dynamic_ncols=True)

    def fail(self, run: Run, reason: str) -> None:
        self.failed[run.key] = reason
        self.bar.write(f"FAILED   {run.key}: {reason}")

    def check_elsewhere(self) -> None:
        """Runs another process worked on: done, or stopped without finishing (failed here)."""
        for key, r in list(self.waiting.items()):
            state = run_state(r)
            if state != "running":
                del self.waiting[key]
                if state == "done":
                    self.done.add(key)
                else:
                    self.failed[key] = "stopped elsewhere without finishing"

    def ready(self) -> list[Run]:
        """Pending runs whose needs are done, pretraining first (other runs wait for it), then the longest, so none
        is left alone at the end; runs whose needs failed fail too."""
        ready = []
        for run in list(self.pending):
            blocked = [n for n in run.needs if n in self.failed]
            if blocked:
                self.pending.remove(run)
                self.bar.update(1)
                self.fail(run, f"needs {blocked[0]}, which failed ({self.failed[blocked[0]]})")
            elif all(n in self.done or n not in self.known for n in run.needs):
                ready.append(run)
        return sorted(ready, key=lambda r: (r.kind != "pretrain", -expected_cost(r)))

    def start(self, ready: list[Run]) -> None:
        """Submit jobs while there is room: a pretraining run alone, fine-tuning runs in chains."""
        while ready and len(self.in_flight) < self.parallel:
            n = 1 if ready[0].kind == "pretrain" else max(1, min(self.chain, len(ready) // (2 * self.parallel)))
            batch = [ready.pop(0)]
            while len(batch) < n and ready and ready[0].kind != "pretrain":
                batch.append(ready.pop(0))
            job = self.executor.submit(TrainChain(self.threads), [(r.kind, list(r.argv)) for r in batch])
            self.in_flight[id(job)] = (job, batch, time.time())
            for r in batch:
                self.pending.remove(r)
            names = batch[0].key + (f" and {len(batch) - 1} more" if len(batch) > 1 else "")
            self.bar.write(f"started  {names}  (job {job.job_id}, log {getattr(job, 'paths', None) and job.paths.stdout})")

    def finish(self) -> None:
        """Take in the jobs that ended: each of their runs done, failed, or left to another process."""
        for key, (job, batch, t0) in list(self.in_flight.items()):
            if not job.done():
                continue
            del self.in_flight[key]
            self.bar.update(len(batch))
            try:
                results = job.result()
            except Exception as e:  # the job died (killed, out of memory): its log says more
                for r in batch:
                    self.fail(r, f"{last_line(e)} (log: {job.paths.stderr})")
                continue
            for r, res in zip(batch, results):
                if res.get("status") == "failed":
                    self.fail(r, f"{res['error']} (log: {job.paths.stderr})")
                elif res.get("status") == "running elsewhere":
                    self.waiting[r.key] = r
                    self.bar.write(f"elsewhere {r.key}: {res['detail']}")
                else:
                    self.done.add(r.key)
                    self.bar.write(f"finished {describe(r, res)}")
            if len(batch) > 1:
                self.bar.write(f"         (job {job.job_id}: {len(batch)} runs in {time.time() - t0:.0f} s)")

    def run(self) -> dict[str, str]:
        """Until every run is done or failed; returns failed key -> reason. Ctrl-C or SIGTERM (a grid started in
        the background ignores Ctrl-C; ``kill PID`` stops it) cancels the jobs in flight (their runs resume from
        their checkpoints) and keeps every finished run."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        try:
            while self.pending or self.in_flight:
                self.check_elsewhere()
                self.start(self.ready())
                self.finish()
                if self.in_flight or self.waiting:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            for job, _, _ in self.in_flight.values():
                job.cancel(check=False)
            self.bar.write("interrupted: runs in flight were stopped (they resume from their checkpoints); "
                           "finished runs are kept")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.bar.close()
        return self.failed


def _terminate_as_interrupt(signum, frame):
    """SIGTERM to a grid: stop it the way Ctrl-C does."""
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def plan(cfg: dict, world_size: int = 1) -> tuple[list[Run], list[Run], list[Run]]:
    """(all runs, runs to run here, runs running elsewhere); moves aside folders with other settings.
    ``world_size``: the processes of a pretraining run where the grid runs them.

    Pretraining runs come first, so a fine-tuning run whose encoder was moved aside is seen
    with the missing encoder (and so as another run) rather than with the stale one.
    """
    runs = pretrain_runs(cfg) + finetune_runs(cfg)
    todo, elsewhere = [], []
    for r in runs:
        state = run_state(r, world_size if r.kind == "pretrain" else None)
        if state == "other":
            print(f"{r.out} holds a run with other settings; moved to {move_aside(r)}")
            state = "new"
        if state == "running":
            elsewhere.append(r)
            print(f"running elsewhere: {r.key} (process {lock_holder(r.out)} holds {r.out})")
        elif state != "done":
            todo.append(r)
    return runs, todo, elsewhere


def check_device(cfg: dict, executor: str) -> None:
    """Before anything starts: a grid run on this machine must ask for a device it has; a grid on SLURM
    must name its device type (``auto`` would resolve on each node, and the device type is part of a
    pretraining run's identity)."""
    if executor == "slurm":
        if cfg["device"] == "auto":
            raise ConfigError(f"{cfg['config_path']}: a grid on SLURM needs device: cuda or device: cpu (not auto)")
        return
    if not str(cfg["device"]).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{cfg['name']} asks for device {cfg['device']}, but this machine has no CUDA device: run it "
                          "on a GPU machine or with --executor slurm --profile ..., or use a CPU config "
                          "(experiments/configs/quick.yaml); nothing was started")


def reproduce(cfg: dict, executor: str = "local", profile: str | None = None) -> dict:
    """Bring every run of ``cfg`` to done, then collect. Returns {"failed": {...}, "results": dir}."""
    check_device(cfg, executor)
    check_runs(pretrain_runs(cfg) + finetune_runs(cfg))  # every run's options, before anything is written
    world = pretrain_world_size(load_profile(profile)) if executor == "slurm" else 1
    runs_dir = Path(cfg["runs_dir"])
    runs_dir.mkdir(parents=True, exist_ok=True)
    ensure_split(cfg)
    runs, todo, elsewhere = plan(cfg, world)
    print(f"{cfg['name']}: {len(runs)} runs, {len(runs) - len(todo) - len(elsewhere)} already finished, "
          f"{len(elsewhere)} running elsewhere, {len(todo)} to run")
    if executor == "slurm":
        return submit_grid(cfg, todo, profile, collect_fn=collect)
    failed = {}
    if todo:
        parallel = max_parallel(cfg, executor)
        ex = make_executor(executor, runs_dir / "jobs", timeout_min=cfg["timeout_min"])
        failed = Schedule(todo, ex, parallel, int(cfg["cpus_per_job"]), elsewhere).run()
    results = collect(cfg)
    if failed:
        print(f"{len(failed)} runs failed:")
        for k, why in failed.items():
            print(f"  {k}: {why}")
    return {"failed": failed, "results": str(results)}
