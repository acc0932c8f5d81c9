"""Running pretraining and fine-tuning jobs through submitit: local processes, in-process
debugging, or a SLURM cluster (job arrays, dependencies, requeue with resume)."""
from .executors import EXECUTORS, make_executor
from .jobs import RunInterrupted, TrainJob

__all__ = ["EXECUTORS", "RunInterrupted", "TrainJob", "make_executor"]
