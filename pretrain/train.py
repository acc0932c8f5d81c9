"""Pretrain an encoder with a pretext task on the unlabelled training-pool slices.

    python -m scans split data/msd_hippocampus --out splits.json
    python -m pretrain --task rotation --data data/msd_hippocampus --split splits.json \\
        --encoder unet_tiny --epochs 3 --batch-size 32 --out runs/pretrain/rotation
    python -m pretrain --task simclr ... --device cuda --amp          # one GPU
    torchrun --nproc_per_node 4 -m pretrain --task simclr ...         # DDP, negatives gathered
    python -m slurm submit pretrain --profile slurm/profiles/example-gpu.yaml --task simclr ...

Writes RUN_DIR/{config.json, log.jsonl, checkpoint.pt, summary.json, encoder.pt} and TensorBoard
events; a task that trains a whole segmenter (restore) also writes RUN_DIR/network.pt. Running the same command again resumes from RUN_DIR/checkpoint.pt (written every
epoch, every --ckpt-every steps and on SIGTERM/SIGUSR1/SIGUSR2/SIGINT, which every process of a
DDP run agrees on) and ends at the same step count with the same encoder, or, once the run is
finished, does nothing. Any other result-affecting argument in the same RUN_DIR (the number of
processes and the device type included) is refused (exit code 2); so is a second process while
one works on RUN_DIR. Every random draw of a view comes from the sample's own generator
(seed, epoch, slice), so --workers changes nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time

import torch

import engine
import models
import scans

from . import tasks  # noqa: F401  (registers every task)
from .probe import knn_accuracy, probe_sets, write_embedding
from .registry import TASKS, describe_tasks, task_options

SUMMARY = "summary.json"
NETWORK = "network.pt"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m pretrain", description=__doc__, add_help=add_help,
                                parents=[engine.runtime_parser(log_every=10, ckpt_every=0, workers=-1)],
                                epilog="pretext tasks:\n" + describe_tasks(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="pretext task (listed below)")
    p.add_argument("--data", default="data/msd_hippocampus", help="dataset folder (MSD layout or plain folder)")
    p.add_argument("--split", required=True, help="split JSON from `python -m scans split`; only its train_pool is used")
    p.add_argument("--encoder", default="unet_tiny", help="encoder registry name (python -m models list)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=0, help="total optimisation steps (overrides --epochs when > 0)")
    p.add_argument("--batch-size", type=int, default=32, help="slices per process and step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-fraction", type=float, default=0.05, help="fraction of the steps spent in linear warm-up")
    p.add_argument("--seed", type=int, default=0, help="weights, slice order and every view's random draws")
    p.add_argument("--size", type=int, nargs=2, default=[48, 64], help="slice size H W after pad/crop")
    p.add_argument("--axis", type=int, default=2, help="slice axis of the volumes")
    p.add_argument("--max-cases", type=int, default=0, help="use only the first N training-pool cases (tests)")
    for name, cls in sorted(TASKS.items()):
        cls.add_args(p.add_argument_group(f"{name} ({cls.paper})"))
    scans.add_normalization_args(p)
    return p


def run_identity(args, world_size: int | None = None) -> dict:
    """What makes two pretraining runs the same run: every result-affecting argument of this task,
    the number of processes (``world_size``, default: this launch's; it sets the global batch and
    the steps of an epoch), the device type, and the training pool of the split (not the split
    file: its test set and label fractions do not reach pretraining, so splits with other label
    seeds share one pretraining run)."""
    other_tasks = {o for name in TASKS if name != args.task for o in task_options(name)}
    ident = engine.run_identity(vars(args), leave_out=other_tasks | {"split"},
                                world_size=engine.world_size() if world_size is None else world_size)
    ident["split__train_pool_sha256"] = train_pool_digest(args.split)
    if "flip_axes" in ident:  # "auto" as the dataset's protocol resolves it
        ident["flip_axes"] = list(scans.resolve_flip_axes(args.flip_axes, args.data))
    return ident


def train_pool_digest(split_file) -> str | None:
    """sha256 of the split's sorted training-pool case ids (None if the file cannot be read)."""
    try:
        pool = sorted(scans.load_splits(split_file)["train_pool"])
    except scans.ScanError:
        return None
    return hashlib.sha256(json.dumps(pool).encode()).hexdigest()


def check_args(args) -> None:
    """Refuse, before anything is created, options that cannot run (ConfigError / ValueError)."""
    engine.check_runtime_args(args)
    engine.resolve_device(args.device)
    if scans.normalization_of(args).mode == "zscore":  # also: ValueError for --window without --norm ct and the reverse
        raise engine.ConfigError("--norm zscore: pretext views assume intensities in [0, 1]; use --norm percentile or ct")
    for name in ("epochs", "steps", "max_cases"):
        if getattr(args, name) < 0:
            raise engine.ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.batch_size < 1:
        raise engine.ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.steps == 0 and args.epochs == 0:
        raise engine.ConfigError("--epochs and --steps are both 0: nothing to train")
    engine.check_finite("--lr", args.lr, 0, inclusive=False)
    engine.check_finite("--weight-decay", args.weight_decay, 0)
    if not 0 <= args.warmup_fraction < 1:
        raise engine.ConfigError(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    if args.axis not in (0, 1, 2):
        raise engine.ConfigError(f"--axis must be 0, 1 or 2, got {args.axis}")
    if min(args.size) < 1:
        raise engine.ConfigError(f"--size must be positive, got {args.size}")


def training_cases(args) -> list:
    splits = scans.load_splits(args.split)
    pool = set(splits["train_pool"])
    cases = [c for c in scans.find_cases(args.data) if c.case_id in pool]
    missing = pool - {c.case_id for c in cases}
    if missing:
        raise scans.ScanError(args.data, f"{len(missing)} training-pool cases of {args.split} are not in the dataset "
                                         f"(e.g. {sorted(missing)[:3]})")
    return cases[: args.max_cases] if args.max_cases else cases


def final_accuracy(rows: list[dict], after_step: int) -> float | None:
    """Mean logged pretext accuracy over the last epoch (steps > ``after_step``)."""
    accs = [r["accuracy"] for r in rows if r["step"] > after_step] or [r["accuracy"] for r in rows[-1:]]
    return sum(accs) / len(accs) if accs else None


def probe_sets_of(args):
    """The k-NN probe's reference and query slices of the training pool, or None if a case has no label."""
    cases = training_cases(args)
    if any(c.label is None for c in cases):
        return None
    labelled = scans.load_cases(cases, scans.normalization_of(args), with_label=True)
    groups = scans.load_splits(args.split).get("groups") or scans.load_protocol(args.data).subjects
    return probe_sets(labelled, groups, tuple(args.size), args.axis)


class PretextTrainer(engine.Trainer):
    """The pretraining step: a pretext task's forward pass, its loss and accuracy, and view previews."""

    def __init__(self, task, net, dataset, sampler, args, device, writer, probe=None, total: int = 0):
        self.task, self.net, self.dataset, self.sampler, self.args = task, net, dataset, sampler, args
        self.device, self.writer, self.probe, self.total = device, writer, probe, total

    def batches(self, start, total):
        return engine.make_loader(self.dataset, self.sampler.set_range(start, total), self.args.batch_size,
                                  self.args.workers, self.device, self.args.seed)

    def forward(self, batch):
        return self.net(batch)

    def after_step(self, step, batch, out, logged, epoch_start):
        if self.writer is None:
            return
        if logged and epoch_start:  # views come from the batch: a preview draws nothing
            self.writer.add_images(f"pretrain/{self.args.task}/views", self.task.preview(batch).float().cpu(), step)
        if self.probe is not None and step % self.sampler.batches_per_epoch == 0 and step < self.total:
            # the k-NN probe at each epoch's end (on a copy of the encoder: it changes nothing and draws nothing)
            self.writer.add_scalar("encoder/knn_accuracy", knn_accuracy(self.task.model.encoder, *self.probe, self.device),
                                   step)


def run(args) -> dict:
    """Train; return the summary dict (also written to RUN_DIR/summary.json)."""
    t_start = time.time()
    check_args(args)
    rank, world, device = engine.setup_distributed(engine.resolve_device(args.device))
    main_proc = rank == 0
    folder = engine.RunFolder(args.out, run_identity(args, world), SUMMARY)
    done = folder.finished()
    if done is not None:
        if main_proc:
            print(f"{folder.path} already holds this finished {args.task} run ({done['step']} steps); nothing to do",
                  flush=True)
        return done
    engine.on_main(folder.claim)  # every process stops if the main one cannot take the folder
    failed = True
    try:
        result = train(args, folder, device, rank, world, t_start)
        failed = False
        return result
    finally:
        folder.release(failed=failed)


def train(args, folder: engine.RunFolder, device: torch.device, rank: int, world: int, t_start: float) -> dict:
    """Build the task, train it through the engine's loop, write encoder.pt and summary.json."""
    main_proc = rank == 0
    provenance = engine.provenance() if main_proc else {}
    if main_proc:
        engine.print_header("pretrain", folder, provenance)
    engine.seed_everything(args.seed + rank)  # initial weights (rank 0's are broadcast); the views draw per sample

    loaded = scans.load_cases(training_cases(args), scans.normalization_of(args), with_label=False,
                              progress=main_proc and engine.on_terminal())
    encoder = models.create_encoder(args.encoder, in_chans=1, **TASKS[args.task].encoder_kwargs(args))
    task = TASKS[args.task](args, encoder)
    dataset = scans.UnlabelledSlices(loaded, size=tuple(args.size), axis=args.axis, transform=task.views, seed=args.seed)
    sampler = engine.ResumableSampler(len(dataset), args.batch_size, args.seed, rank, world)
    per_epoch = sampler.batches_per_epoch
    total = args.steps if args.steps > 0 else args.epochs * per_epoch

    model = engine.prepare_model(task.model, device)
    state, log = engine.start_training(folder, model, device, t_start, lr=args.lr, weight_decay=args.weight_decay,
                                       amp=args.amp, main=main_proc)
    def start_on_main():  # the probe's slices, and config.json at the first step
        probe = probe_sets_of(args)
        if state.step == 0:
            folder.write_config(args=vars(args), provenance=provenance, slices=len(dataset), world_size=world,
                                cases=[c.case_id for c in loaded], steps_total=total, steps_per_epoch=per_epoch,
                                knn_accuracy_start=probe and knn_accuracy(encoder, *probe, device))
        return probe
    probe = engine.on_main(start_on_main)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    writer = engine.tensorboard_writer(folder.path, purge_step=state.step) if main_proc else None
    if writer is not None and state.step == 0:
        engine.write_run_text(writer, "pretrain", vars(args), provenance, {"identity": folder.identity, "steps_total": total},
                              first=("task", "encoder", "arch", "seed", "epochs", "steps"))
        writer.add_scalar("pretrain/chance", task.chance, 0)
        if (folder.config() or {}).get("knn_accuracy_start") is not None:
            writer.add_scalar("encoder/knn_accuracy", folder.config()["knn_accuracy_start"], 0)
    settings = engine.loop_settings(args, total, per_epoch, args.batch_size * world, args.lr, args.warmup_fraction,
                                    checkpoint_each_epoch=True, log_epoch_start=True, tb_prefix="pretrain/",
                                    desc=f"pretrain {args.task}")
    trainer = PretextTrainer(task, net, dataset, sampler, args, device, writer, probe, total)
    try:
        stopped = engine.fit(folder, state, trainer, device, settings, log, writer, main=main_proc)
        if stopped:
            return {"status": "interrupted", "step": state.step, "steps_total": total, "signal": stopped}
        summary = {"status": "done", "task": args.task, "encoder": args.encoder, "step": state.step,
                   "steps_total": total, "final_accuracy": final_accuracy(log.rows(), total - per_epoch),
                   "chance": task.chance, "metric": task.metric, "slices": len(dataset), "cases": len(loaded), "world_size": world,
                   "wall_time_s": round(state.elapsed(), 1)}
        if main_proc:
            write_outputs(args, folder, task, encoder, [c.case_id for c in loaded], summary, probe, device,
                          provenance, writer)
        return summary
    finally:
        if writer is not None:
            writer.close()


def task_hparams(args, steps: int) -> dict:
    """The settings that describe a pretraining run in TensorBoard's HPARAMS. The leading columns are the ones a
    fine-tuning run fills too (finetune.board.hparams; TensorBoard draws a run in its default view only when the
    first columns are filled): ``init`` is the task (the init this run makes), ``label_fraction`` says no labels.
    The task's own options follow as ``task.OPTION``, after every shared column in name order."""
    group = argparse.ArgumentParser(add_help=False).add_argument_group()
    TASKS[args.task].add_args(group)
    own = {f"task.{a.dest}": getattr(args, a.dest) for a in group._group_actions}
    shared = {"kind": "pretraining", "init": args.task, "arch": getattr(args, "arch", None) or "-",
              "encoder": args.encoder, "label_fraction": "0% (no labels)", "label_seed": "-", "seed": args.seed,
              "steps": steps, "batch_size": args.batch_size, "lr": args.lr}
    return {k: (" ".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in {**shared, **own}.items()}


HEADLINE_CHARTS = {  # CUSTOM SCALARS: one metric of every pretraining run per chart
    "pretext score, with each task's chance level": ["pretrain/accuracy$", "pretrain/chance"],
    "pretext score over the last epoch (the table's number)": ["pretrain/accuracy_last_epoch"],
    "pretext loss": ["pretrain/loss"],
    "k-NN probe of the encoder, each epoch": ["encoder/knn_accuracy"],
}


def write_outputs(args, folder, task, encoder, case_ids, summary, probe, device, provenance, writer) -> None:
    """After the last step, on the main process: the k-NN probe (added to ``summary``), encoder.pt,
    summary.json and the TensorBoard summaries."""
    summary["knn_accuracy_start"] = (folder.config() or {}).get("knn_accuracy_start")
    summary["knn_accuracy"] = probe and knn_accuracy(encoder, *probe, device)
    meta = {"pretext": args.task, "data": str(args.data), "split": str(args.split), "train_cases": case_ids,
            "config": vars(args), "commit": provenance.get("commit"), "dirty": provenance.get("dirty"),
            "steps": summary["step"], "final_accuracy": summary["final_accuracy"], **task.encoder_meta()}
    models.save_encoder(folder.path / "encoder.pt", encoder, **meta)
    network = task.network()
    if network is not None:  # a whole segmenter learned the task: all of it but its output layer transfers
        models.save_network(folder.path / NETWORK, network[0], network[1], **meta)
    if writer is not None:
        if summary["knn_accuracy"] is not None:
            writer.add_scalar("encoder/knn_accuracy", summary["knn_accuracy"], summary["step"])
            write_embedding(writer, encoder, probe, device, summary["step"])
        writer.add_scalar("pretrain/accuracy_last_epoch", summary["final_accuracy"] or 0.0, summary["step"])
        writer.add_scalar("pretrain/chance", task.chance, summary["step"])
        engine.write_hparams(writer, task_hparams(args, summary["step"]))
        engine.write_layout(writer, HEADLINE_CHARTS, category="pretraining: every run")
    folder.write_result(summary)
    knn = (f"; k-NN probe {summary['knn_accuracy_start']:.3f} -> {summary['knn_accuracy']:.3f}"
           if summary["knn_accuracy"] is not None and summary["knn_accuracy_start"] is not None else "")
    print(f"done: {args.task} {task.metric} {summary['final_accuracy'] or 0:.3f} over the last epoch "
          f"(chance {task.chance:.3f}){knn} -> {folder.path / 'encoder.pt'}", flush=True)


def main(argv=None) -> int:
    return engine.main(run, get_args_parser(), argv)
