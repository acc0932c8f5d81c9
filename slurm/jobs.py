"""The callable that submitit runs: one pretraining or fine-tuning run given its command line.

It is a ``submitit.helpers.Checkpointable``: on pre-emption or time-out submitit calls
``checkpoint``, which resubmits the same call; the run then resumes from the checkpoint in its
own run folder (pretraining and fine-tuning both resume automatically). With several submitit
tasks (one per GPU) the torch.distributed environment is exported first, so pretraining runs
as DDP.
"""
from __future__ import annotations

import os

import submitit
import torch

import engine
import finetune
import pretrain

TRAINERS = {"pretrain": pretrain, "finetune": finetune}


class RunInterrupted(RuntimeError):
    """The run stopped on a signal after saving its checkpoint; running it again resumes it."""


def _distributed_env() -> None:
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (debug executor in-process)
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


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
            raise RunInterrupted(f"{self.kind} run stopped at step {res.get('step')}; run again to resume")
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
