"""The callable that submitit runs: one pretraining or fine-tuning run given its command line.

It is a ``submitit.helpers.Checkpointable``: on pre-emption or time-out submitit calls
``checkpoint``, which resubmits the same call; the run then resumes from the checkpoint in its
own run folder (pretraining and fine-tuning both resume automatically). With several submitit
tasks (one per GPU) the torch.distributed environment is exported first, so pretraining runs
as DDP.

SLURM's time-limit warning (USR2, ``signal_delay_s`` before the limit; submitit's pre-emption
signal) reaches the training loop first: while a run trains, the engine's stop signal handles it,
every process stops after the same step and the checkpoint is written; then the job hands the
signal to submitit's own handler, which calls ``checkpoint()`` and requeues the job. So at most
the step in flight when the warning came is done again, instead of everything since the last
periodic checkpoint. (Outside the loop, while data loads or the test set is scored, submitit
handles the signal at once: nothing since the last checkpoint is lost then either.)
"""
from __future__ import annotations

import copy
import os
import signal

import submitit
import torch

import engine
import finetune
import pretrain

TRAINERS = {"pretrain": pretrain, "finetune": finetune}  # the one map of the trainers ...
RESULT = {"pretrain": pretrain.SUMMARY, "finetune": finetune.METRICS}  # ... and the file that marks a run finished


def check_run_args(kind: str, args, pending_init: bool = False) -> None:
    """A run's options as its trainer checks them, for a run that happens on another machine: its device need
    only be one this project runs on (the node it lands on has it or refuses it), and with ``pending_init`` the
    encoder file an earlier job of a grid will write need not exist yet."""
    engine.check_device_name(args.device)
    args = copy.copy(args)
    args.device = "cpu"
    if pending_init:
        args.init = "random"
    TRAINERS[kind].check_args(args)


class RunInterrupted(RuntimeError):
    """The run stopped on a signal after saving its checkpoint; running it again resumes it."""


DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _distributed_env() -> None:
    """Export the torch.distributed variables of this SLURM task. Values a site's prolog or the user's
    environment already set are replaced by the job's own (a rank from elsewhere would join the wrong
    group), and the replacement is said in the job's log."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (debug executor in-process)
        return
    if env.num_tasks > 1:
        before = {k: os.environ.get(k) for k in DIST_VARS}
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        changed = [f"{k} {before[k]} -> {os.environ[k]}" for k in DIST_VARS
                   if before[k] is not None and before[k] != os.environ.get(k)]
        if changed:
            print(f"note: replaced torch.distributed variables the environment had set: {', '.join(changed)}", flush=True)


def preemption_signal() -> int:
    """The signal submitit handles as pre-emption / time-out (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    return int(getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")))


def hand_signal_to_submitit(stopped: str | None) -> None:
    """After a run stopped on submitit's pre-emption signal (its checkpoint written), call the handler submitit
    installed for it, which calls ``checkpoint()``, requeues the job and exits; a no-op outside a SLURM job."""
    sig = preemption_signal()
    if stopped != signal.Signals(sig).name:
        return
    handler = signal.getsignal(sig)
    if callable(handler) and getattr(handler, "__self__", None) is not None and "submitit" in type(handler.__self__).__module__:
        handler(sig, None)


def last_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1]}" if text else type(e).__name__


class TrainJob(submitit.helpers.Checkpointable):
    """Run ``python -m pretrain`` or ``python -m finetune`` in-process with ``argv``."""

    def __init__(self, kind: str, threads: int = 0):
        if kind not in TRAINERS:
            raise engine.ConfigError(f"job kind must be one of {sorted(TRAINERS)}, got {kind!r}")
        self.kind, self.threads = kind, threads

    def __call__(self, argv: list[str]) -> dict:
        if self.threads:
            torch.set_num_threads(self.threads)
            os.environ["OMP_NUM_THREADS"] = str(self.threads)
        trainer = TRAINERS[self.kind]
        if self.kind == "pretrain":
            _distributed_env()
        try:
            res = trainer.run(trainer.get_args_parser().parse_args(list(argv)))
        except engine.RunBusy as e:  # another process works on this run folder: leave it to it
            return {"status": "running elsewhere", "detail": str(e)}
        finally:
            engine.cleanup_distributed()
        if res.get("status") == "interrupted":
            hand_signal_to_submitit(res.get("signal"))  # SLURM's time-limit warning: requeue now (the run has saved)
            raise RunInterrupted(f"{self.kind} run stopped ({res.get('signal')}) at step {res.get('step')}; "
                                 "run again to resume")
        return res


class TrainChain:
    """Several runs one after the other in one process: ``[(kind, argv), ...]`` -> one result each.

    On one machine this saves each run the start of a Python process and the reading of the
    data (decoded volumes stay cached in the process). A run that fails does not stop the
    chain: its result is ``{"status": "failed", "error": <last line>}``.
    """

    def __init__(self, threads: int = 0):
        self.threads = threads

    def __call__(self, runs: list[tuple[str, list[str]]]) -> list[dict]:
        results = []
        for kind, argv in runs:
            try:
                results.append(TrainJob(kind, self.threads)(argv))
            except Exception as e:  # noqa: BLE001  (reported per run; the chain goes on)
                results.append({"status": "failed", "error": last_line(e)})
        return results
