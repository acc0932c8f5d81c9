"""What every run shares: the run folder (lock, identity, config, checkpoint, log, result), the
training loop, resume, signals, the resumable sampler, the learning-rate schedule, devices / AMP /
DDP, seeding and provenance. Pretraining and fine-tuning are built on it; it knows neither.
"""
from .args import as_flags, check_runtime_args, runtime_parser
from .board import command_line, write_hparams, write_layout, write_run_text
from .device import (capture_rng, cleanup_distributed, default_workers, deterministic_on_cpu, resolve_device, restore_rng,
                     seed_everything, setup_distributed, to_device, worker_init)
from .errors import ConfigError, RunBusy, RunMismatch
from .folder import CHECKPOINT, CONFIG, LOG, RunFolder, lock_holder, read_json
from .identity import NOT_IDENTITY, file_digest, identity_diff, run_identity
from .log import JsonlLog, Progress, on_terminal, print_header, tensorboard_writer
from .loop import LoopSettings, StopSignal, Trainer, TrainState, autocast, fit, optimizer_step, resume
from .provenance import git_info, machine_info, provenance
from .sampler import ResumableSampler, lr_at

__all__ = [
    "CHECKPOINT", "CONFIG", "ConfigError", "JsonlLog", "LOG", "LoopSettings", "NOT_IDENTITY", "Progress",
    "ResumableSampler", "RunBusy", "RunFolder", "RunMismatch", "StopSignal", "TrainState", "Trainer",
    "as_flags", "autocast", "capture_rng", "command_line", "deterministic_on_cpu", "write_hparams", "write_layout", "write_run_text", "check_runtime_args", "cleanup_distributed", "default_workers", "file_digest", "fit",
    "git_info", "identity_diff", "lock_holder", "lr_at", "machine_info", "on_terminal", "optimizer_step", "print_header", "provenance",
    "read_json", "resolve_device", "restore_rng", "resume", "run_identity", "runtime_parser",
    "seed_everything", "setup_distributed", "tensorboard_writer", "to_device", "worker_init",
]
