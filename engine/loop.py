"""The one training loop of pretraining and fine-tuning.

A trainer plugs in what is its own (a :class:`Trainer`: its batches, its forward pass and loss,
what it logs, what it does after a step); the loop owns what every run shares: the learning-rate
schedule, mixed precision, the optimizer step, logging to JSON lines / TensorBoard (x-axis:
optimisation steps) / console, checkpoints (every ``ckpt_every`` steps, at epoch ends when
asked, on a stop signal and at the end), resume, and stopping on SIGTERM / SIGUSR1 / SIGUSR2 /
SIGINT or at ``stop_at_step``.

Resume is exact: the checkpoint holds model, optimizer, scaler, step and every process's RNG
states, the batches of the whole run come from one iterator that starts at the checkpoint's step
(each sample drawing from its own generator), and rows past the checkpoint are dropped from the
log, so an interrupted and resumed run logs each step once and ends where an uninterrupted one
would.

With several processes (DDP), every process checks after each step whether any of them received
a stop signal (one small all-reduce), so all stop after the same step; the main process writes
the one checkpoint while the others wait for it.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from typing import Iterable

import torch

from .device import agree, capture_rng, gather_objects, on_main, rank, restore_rng, to_device
from .folder import RunFolder
from .log import JsonlLog, Progress
from .sampler import lr_at

# Why a run stops, as codes the processes of a run agree on (the largest wins): SLURM's time-limit warning
# (USR2) first, so a job that must requeue is never told a lesser reason.
STOP_AT_STEP = 1
STOP_CODES = {signal.SIGINT: 2, signal.SIGUSR1: 3, signal.SIGTERM: 4, signal.SIGUSR2: 5}


class StopSignal:
    """Turns SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT (pre-emption, SLURM's time-limit warning, Ctrl-C)
    into a flag the loop checks between steps. ``received`` is the largest code of :data:`STOP_CODES`
    received (or :data:`STOP_AT_STEP`); ``close`` gives the signals back to whoever handled them before."""

    def __init__(self):
        self.received: int = 0
        self.previous = {}
        for sig in STOP_CODES:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. submitit's debug executor)
                pass

    def _handle(self, signum, frame):
        self.received = max(self.received, STOP_CODES[signal.Signals(signum)])

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def __bool__(self) -> bool:
        return self.received != 0


def stop_signal(code: int) -> signal.Signals | None:
    """The signal of a :class:`StopSignal` code (None for --stop-at-step)."""
    return next((sig for sig, c in STOP_CODES.items() if c == code), None)


def stop_reason(code: int) -> str:
    """``SIGTERM``, ``SIGUSR2``, ... or ``stop-at-step`` for a :class:`StopSignal` code."""
    sig = stop_signal(code)
    return sig.name if sig is not None else "stop-at-step"


def autocast(device: torch.device, enabled: bool):
    """Mixed precision when ``enabled``: float16 on CUDA, bfloat16 on CPU."""
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16, enabled=enabled)


def optimizer_step(loss: torch.Tensor, optimizer, scaler) -> None:
    """Backward pass and optimizer step through the GradScaler (a no-op scaler without AMP on CUDA)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


class TrainState:
    """What a checkpoint holds: model, optimizer, GradScaler, step, wall time so far, and the RNG
    states of every process (``rng[rank]``)."""

    def __init__(self, model: torch.nn.Module, optimizer, scaler, t_start: float | None = None):
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.step, self.elapsed_before = 0, 0.0
        self.t_start = time.time() if t_start is None else t_start

    def elapsed(self) -> float:
        """Wall seconds of this run, summed over its interrupted parts."""
        return self.elapsed_before + time.time() - self.t_start

    def state_dict(self) -> dict:
        """The checkpoint. A collective with several processes: every process calls it at the same step."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "elapsed_s": self.elapsed(),
                "rng": gather_objects(capture_rng())}

    def load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        states = ckpt["rng"]
        if not isinstance(states, list) or rank() >= len(states):
            raise ValueError(f"the checkpoint holds the random states of {len(states) if isinstance(states, list) else 1} "
                             f"process(es), not of process {rank()}; remove the run folder to start afresh")
        restore_rng(states[rank()])
        self.step, self.elapsed_before = ckpt["step"], ckpt["elapsed_s"]


class Trainer:
    """What a trainer plugs into :func:`fit`. Override :meth:`batches` and :meth:`forward`."""

    def batches(self, start: int, total: int) -> Iterable:
        """The batches of steps ``start`` to ``total`` (exclusive), as one iterable for the whole run."""
        raise NotImplementedError

    def forward(self, batch) -> dict:
        """Run under autocast: ``{"loss": scalar tensor, other scalars ...}``."""
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        """Called before the step that makes ``step + 1`` steps (e.g. freeze or unfreeze layers)."""

    def log_row(self, step: int, out: dict) -> dict:
        """Scalars to log after ``step`` (called on logged steps only); default: every scalar of ``out``."""
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}

    def evaluate(self, step: int) -> dict:
        """Called after each step, before logging: periodic evaluation. Returns scalars to add to
        this step's JSON-lines row (the step is then logged), or {} (the trainer writes its own
        TensorBoard scalars for them)."""
        return {}

    def after_step(self, step: int, batch, out: dict, logged: bool, epoch_start: bool) -> None:
        """Called after each step, after logging (e.g. previews of what the model sees)."""


@dataclass
class LoopSettings:
    total: int                      # optimisation steps of the whole run
    per_epoch: int                  # batches per epoch (per process)
    lr: float                       # peak learning rate
    warmup: int                     # linear warm-up steps, then cosine decay to 0
    images_per_step: int            # images seen per step over all processes (logged as ``images``)
    amp: bool = False               # float16 + GradScaler on CUDA, bfloat16 on CPU
    channels_last: bool = True      # 4D batches in channels_last (the model must be too): faster convolutions
    log_every: int = 10
    ckpt_every: int = 0             # 0: no periodic checkpoint
    checkpoint_each_epoch: bool = False
    log_epoch_start: bool = False   # also log the first step of every epoch
    stop_at_step: int = 0           # act as if a stop signal came after this step (0: never)
    progress_every: float = 30.0    # seconds between progress lines off a terminal
    sleep_per_step: float = 0.0     # slow the run down (tests of interruption); changes no number
    wait_at_step: int = 0           # after this step, wait for a stop signal on any process (0: never)
    tb_prefix: str = "train/"       # TensorBoard tag prefix of the logged scalars
    desc: str = "train"             # progress label


def wait_for_stop(stop: StopSignal, step: int, progress: Progress) -> None:
    """Wait until a stop signal reaches any process (``--wait-at-step``): a test sends its signal once it reads
    the line printed here, so the run stops after a known step however slow the machine. Every process polls
    the same collective, so all leave the wait together."""
    progress.write(f"waiting at step {step} for a stop signal")
    while not agree(stop.received):
        time.sleep(0.05)


def resume(run: RunFolder, state: TrainState, log_enabled: bool = True) -> JsonlLog:
    """Load the run's checkpoint into ``state`` if there is one; return its log, trimmed to the step."""
    ckpt = run.load_checkpoint()
    if ckpt is not None:
        state.load(ckpt)
    return JsonlLog(run.path / "log.jsonl", resume_step=state.step, enabled=log_enabled)


def fit(run: RunFolder, state: TrainState, trainer: Trainer, device: torch.device, s: LoopSettings,
        log: JsonlLog, writer=None, main: bool = True) -> str | None:
    """Train from ``state.step`` to ``s.total``. Returns None when done, else the reason it stopped
    (``SIGTERM``, ``SIGUSR2``, ..., ``stop-at-step``); the checkpoint is saved either way."""
    model, optimizer = state.model, state.optimizer
    stop = StopSignal()
    progress = Progress(s.total, state.step, s.desc, s.progress_every, enabled=main)
    saved = [state.step if state.step else None]  # the step of the checkpoint on disk
    halted = 0

    def save(why: str) -> None:
        saved[0] = state.step
        ckpt = state.state_dict()  # every process: the RNG states are gathered
        on_main(lambda: run.save_checkpoint(ckpt))  # every process waits for the file (and learns if it failed)
        if why.startswith("stop") or not progress.tty:  # a line per checkpoint in log files, not on a terminal
            progress.write(f"checkpoint at step {state.step}/{s.total} ({why}) -> {run.path / 'checkpoint.pt'}")

    if state.step and main:
        progress.write(f"resuming from {run.path / 'checkpoint.pt'} at step {state.step}/{s.total}")
    t_rate, n_rate = time.perf_counter(), 0
    try:
        model.train()
        for batch in (trainer.batches(state.step, s.total) if state.step < s.total else ()):
            step = state.step
            epoch = step // s.per_epoch
            lr = lr_at(step, s.total, s.lr, s.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            trainer.before_step(step)
            batch = to_device(batch, device, s.channels_last)
            with autocast(device, s.amp):
                out = trainer.forward(batch)
            optimizer_step(out["loss"], optimizer, state.scaler)
            state.step = step = step + 1
            n_rate += s.images_per_step
            epoch_start = (step - 1) % s.per_epoch == 0
            evaluated = trainer.evaluate(step)
            logged = (step % s.log_every == 0 or step == s.total or (s.log_epoch_start and epoch_start)
                      or bool(evaluated))
            if logged:
                row = trainer.log_row(step, out)
                if agree(0 if math.isfinite(row["loss"]) else 1):  # every process stops, not only the one that saw it
                    raise FloatingPointError(f"loss is not finite at step {step} (here {row['loss']}); lower the learning rate")
                rate = n_rate / max(1e-9, time.perf_counter() - t_rate)
                t_rate, n_rate = time.perf_counter(), 0
                seen = step * s.images_per_step
                log.write(step=step, epoch=epoch, images=seen, **row, lr=lr, images_per_s=rate, **evaluated)
                if writer is not None:  # x-axis: optimisation steps
                    for k, v in {**row, "lr": lr, "images_per_s": rate, "images_seen": seen}.items():
                        writer.add_scalar(f"{s.tb_prefix}{k}", v, step)
                progress.update(step, loss=row["loss"])
            else:
                progress.update(step)
            trainer.after_step(step, batch, out, logged, epoch_start)
            if s.sleep_per_step:
                time.sleep(s.sleep_per_step)
            if s.stop_at_step and step == s.stop_at_step:
                stop.received = max(stop.received, STOP_AT_STEP)
            if s.wait_at_step and step == s.wait_at_step:
                wait_for_stop(stop, step, progress)
            halted = agree(stop.received)  # every process stops after the same step
            if halted or step >= s.total:
                break
            if (s.ckpt_every and step % s.ckpt_every == 0) or (s.checkpoint_each_epoch and step % s.per_epoch == 0):
                save("periodic" if s.ckpt_every and step % s.ckpt_every == 0 else "epoch end")
        if halted:
            save(f"stop: {stop_reason(halted)}")  # no process leaves before the checkpoint is on disk
        elif saved[0] != state.step:  # the end (or a run of 0 steps)
            save("end")
    finally:
        progress.close()
        stop.close()
        late = stop_signal(stop.received) if stop.received > halted else None
        if late is not None:  # came after the last step (during the final save): its previous handler gets it now
            signal.raise_signal(late)
    if halted and main:
        print(f"stopped ({stop_reason(halted)}) at step {state.step}/{s.total}; checkpoint saved, run again to resume",
              flush=True)
    return stop_reason(halted) if halted else None
