"""What both trainers set up the same way around the loop: the model on its device, AdamW, the
GradScaler, the training state resumed from the run folder, the loop settings, the DataLoader of
the whole run, and ``main`` (exit codes and one-line errors)."""
from __future__ import annotations

import sys

import torch

from .device import cleanup_distributed, default_workers
from .errors import RunBusy
from .folder import RunFolder
from .log import JsonlLog
from .loop import LoopSettings, TrainState, resume
from .sampler import ResumableSampler


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` in channels_last memory format (on the CPU too: U-Net +11%, TransUNet +32% images/s
    on the quick profile's machine); the loop feeds it channels_last batches."""
    return model.to(device).to(memory_format=torch.channels_last)


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (foreach: a 1.5x faster optimizer step on CPU too) over parameters or parameter groups; a group's
    ``lr_scale`` multiplies the schedule's learning rate for it at every step."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def start_training(folder: RunFolder, model: torch.nn.Module, device: torch.device, t_start: float, *, lr: float,
                   weight_decay: float, amp: bool, main: bool = True,
                   param_groups: list[dict] | None = None) -> tuple[TrainState, JsonlLog]:
    """The training state (model, AdamW over ``param_groups`` or all of the model's parameters, GradScaler for
    AMP on CUDA) resumed from the folder's checkpoint if it has one, and the run's log trimmed to that step."""
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    state = TrainState(model, make_optimizer(param_groups or model.parameters(), lr, weight_decay), scaler,
                       t_start=t_start)
    return state, resume(folder, state, log_enabled=main)


def loop_settings(args, total: int, per_epoch: int, images_per_step: int, lr: float, warmup_fraction: float,
                  **kw) -> LoopSettings:
    """The loop's settings: the runtime options of ``args`` (``engine.runtime_parser``), the peak learning rate
    and the share of ``total`` steps in warm-up; ``kw`` sets the rest (checkpoint each epoch, TensorBoard prefix)."""
    return LoopSettings(total=total, per_epoch=per_epoch, lr=lr, warmup=max(1, round(warmup_fraction * total)),
                        images_per_step=images_per_step, amp=args.amp, log_every=args.log_every,
                        ckpt_every=args.ckpt_every, stop_at_step=args.stop_at_step, progress_every=args.progress_every,
                        sleep_per_step=args.sleep_per_step, wait_at_step=args.wait_at_step, **kw)


def make_loader(dataset, sampler: ResumableSampler, batch_size: int, workers: int, device: torch.device,
                seed: int) -> torch.utils.data.DataLoader:
    """One DataLoader for the rest of the run (``sampler.set_range`` first): its workers start once.
    Its own generator: starting it draws nothing from the global RNG (which seeds dropout)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       num_workers=default_workers(workers), pin_memory=device.type == "cuda",
                                       drop_last=True, generator=torch.Generator().manual_seed(seed))


def main(run, parser, argv=None) -> int:
    """Parse ``argv`` with ``parser`` and call ``run(args)``: exit 0 when the run is done, 143 when it stopped
    on a signal (its checkpoint saved; run again to resume), 2 with one line for a refused input, 1 for a
    loss that is not finite."""
    args = parser.parse_args(argv)
    try:
        res = run(args)
    except (ValueError, OSError, RunBusy) as e:  # ValueError: ConfigError, RunMismatch, scans.ScanError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        cleanup_distributed()
    return 0 if res.get("status") == "done" else 143
