"""The launcher: pretraining and fine-tuning runs through submitit on local processes, in-process
(debugging) or a SLURM cluster (job arrays, dependencies, requeue with resume); python -m slurm."""
from .executors import EXECUTORS, make_executor
from .jobs import RESULT, TRAINERS, RunInterrupted, TrainChain, TrainJob, check_run_args
from .profiles import collector_profile, load_profile, pretrain_world_size
from .submit import JOBS_FILE, job_states, read_jobs, submit_grid, submit_run

__all__ = ["EXECUTORS", "JOBS_FILE", "RESULT", "RunInterrupted", "TRAINERS", "TrainChain", "TrainJob", "check_run_args", "collector_profile",
           "job_states", "load_profile", "make_executor", "pretrain_world_size", "read_jobs", "submit_grid", "submit_run"]
