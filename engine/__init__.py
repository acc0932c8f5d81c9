"""What every run shares: the run folder (lock, identity, config, checkpoint, log, result), the
training loop, resume, signals, the resumable sampler, the learning-rate schedule, devices / AMP /
DDP, per-sample randomness, the set-up around the loop (optimizer, scaler, state, DataLoader,
``main``) and provenance. Pretraining and fine-tuning are built on it; it knows neither.
"""
from .args import as_flags, check_finite, check_runtime_args, runtime_parser
from .board import command_line, write_hparams, write_layout, write_run_text
from .device import (agree, capture_rng, check_device_name, cleanup_distributed, default_workers, deterministic_on_cpu,
                     device_type, distributed, on_main, resolve_device, restore_rng, seed_everything,
                     setup_distributed, to_device, world_size)
from .errors import ConfigError, RunBusy, RunMismatch
from .folder import CHECKPOINT, CONFIG, LOG, FolderLock, RunFolder, load_weights, lock_holder, read_json
from .identity import NOT_IDENTITY, file_digest, identity_diff, run_identity
from .log import JsonlLog, Progress, on_terminal, print_header, tensorboard_writer
from .loop import LoopSettings, StopSignal, Trainer, TrainState, autocast, fit, optimizer_step, resume, stop_reason
from .provenance import git_info, machine_info, provenance
from .sampler import ResumableSampler, lr_at
from .setup import loop_settings, main, make_loader, make_optimizer, prepare_model, start_training

__all__ = [
    "CHECKPOINT", "CONFIG", "ConfigError", "FolderLock", "JsonlLog", "LOG", "LoopSettings", "NOT_IDENTITY",
    "Progress", "ResumableSampler", "RunBusy", "RunFolder", "RunMismatch", "StopSignal", "TrainState", "Trainer",
    "agree", "as_flags", "autocast", "capture_rng", "check_device_name", "check_finite", "check_runtime_args", "cleanup_distributed",
    "command_line", "default_workers", "deterministic_on_cpu", "device_type", "distributed", "file_digest", "fit",
    "git_info", "identity_diff", "load_weights", "lock_holder", "loop_settings", "lr_at", "machine_info", "main",
    "make_loader", "make_optimizer", "on_main", "on_terminal", "optimizer_step", "prepare_model",
    "print_header", "provenance", "read_json", "resolve_device", "restore_rng", "resume", "run_identity",
    "runtime_parser", "seed_everything", "setup_distributed", "start_training", "stop_reason",
    "tensorboard_writer", "to_device", "world_size", "write_hparams", "write_layout", "write_run_text",
]
