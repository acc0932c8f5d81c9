"""Pretrain an encoder with a pretext task on the unlabelled training-pool slices.

    python -m scans split data/msd_hippocampus --out splits.json
    python -m pretrain --task rotation --data data/msd_hippocampus --split splits.json \
        --encoder unet_tiny --epochs 3 --batch-size 32 --out runs/pretrain/rotation
    python -m pretrain --task simclr ... --device cuda --amp          # one GPU
    torchrun --nproc_per_node 4 -m pretrain --task simclr ...         # DDP, negatives gathered

Writes RUN_DIR/{config.json, log.jsonl, checkpoint.pt, summary.json, encoder.pt} and TensorBoard
events. Running the same command again resumes from RUN_DIR/checkpoint.pt (written every
epoch, every --ckpt-every steps and on SIGTERM/SIGUSR1) and ends at the same step count.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import models
import scans

from . import jigsaw, rotation, runtime, simclr

TASKS = {"rotation": rotation, "jigsaw": jigsaw, "simclr": simclr}
RESUME_MUST_MATCH = ("task", "encoder", "batch_size", "seed", "epochs", "steps", "size", "data")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m pretrain", description=__doc__, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--data", default="data/msd_hippocampus", help="dataset folder (MSD layout or plain folder)")
    p.add_argument("--split", required=True, help="split JSON from `python -m scans split`; only its train_pool is used")
    p.add_argument("--encoder", default="unet_tiny", help="encoder registry name (python -m models list)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=0, help="total optimisation steps (overrides --epochs when > 0)")
    p.add_argument("--batch-size", type=int, default=32, help="slices per process and step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-fraction", type=float, default=0.05, help="fraction of the steps spent in linear warm-up")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: 0 on <= 2 cores, else up to 8)")
    p.add_argument("--size", type=int, nargs=2, default=[48, 64], help="slice size H W after pad/crop")
    p.add_argument("--axis", type=int, default=2, help="slice axis of the volumes")
    p.add_argument("--max-cases", type=int, default=0, help="use only the first N training-pool cases (tests)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps (0: each epoch only)")
    g = p.add_argument_group("rotation")
    g.add_argument("--crop", type=int, default=32, help="side of the square crop that is rotated (after resizing)")
    g.add_argument("--min-side", type=float, default=0.6, help="smallest crop side / shorter content edge (rotation)")
    g = p.add_argument_group("jigsaw")
    g.add_argument("--tile", type=int, default=32, help="tile side after resizing")
    g.add_argument("--tile-fraction", type=float, default=0.8, help="tile side / grid cell side (rest is the gap)")
    g.add_argument("--num-permutations", type=int, default=100)
    g = p.add_argument_group("simclr")
    g.add_argument("--temperature", type=float, default=0.2)
    g.add_argument("--proj-dim", type=int, default=128)
    g.add_argument("--view-size", type=int, nargs=2, default=[40, 56])
    g.add_argument("--min-scale", type=float, default=0.3, help="smallest area fraction of the random resized crop")
    p.add_argument("--slurm", metavar="PROFILE", help="submit this run as a SLURM job with this profile YAML")
    return p


def to_device(batch, device: torch.device, channels_last: bool):
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if channels_last and batch.ndim == 4 else batch
    return type(batch)(to_device(b, device, channels_last) for b in batch)


def training_cases(args) -> list:
    splits = scans.load_splits(args.split)
    pool = set(splits["train_pool"])
    cases = [c for c in scans.find_cases(args.data) if c.case_id in pool]
    missing = pool - {c.case_id for c in cases}
    if missing:
        raise scans.ScanError(args.data, f"{len(missing)} training-pool cases of {args.split} are not in the dataset (e.g. {sorted(missing)[:3]})")
    return cases[: args.max_cases] if args.max_cases else cases


def check_resume(ckpt: dict, args) -> None:
    old = ckpt["args"]
    diff = [f"{k}: {old.get(k)!r} -> {getattr(args, k)!r}" for k in RESUME_MUST_MATCH if old.get(k) != getattr(args, k)]
    if diff:
        raise ValueError(f"{args.out} holds a run with other settings ({'; '.join(diff)}); use another --out")


def final_accuracy(log_path: Path, after_step: int) -> float | None:
    """Mean logged pretext accuracy over the last epoch (steps > ``after_step``)."""
    if not log_path.is_file():
        return None
    rows = [json.loads(l) for l in log_path.read_text().splitlines() if l.strip()]
    accs = [r["accuracy"] for r in rows if r["step"] > after_step] or [r["accuracy"] for r in rows[-1:]]
    return sum(accs) / len(accs) if accs else None


def finished(out: Path, args) -> dict | None:
    """The summary of a finished run in ``out`` with the same settings, else None."""
    try:
        summary = json.loads((out / "summary.json").read_text())
        config = json.loads((out / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = all(config.get(k) == getattr(args, k) for k in RESUME_MUST_MATCH)
    return summary if same and summary.get("status") == "done" and (out / "encoder.pt").is_file() else None


def run(args) -> dict:
    """Train; return the summary dict (also written to RUN_DIR/summary.json)."""
    t_start = time.time()
    if args.task not in TASKS:
        raise ValueError(f"unknown task {args.task!r}; expected one of {sorted(TASKS)}")
    device = runtime.resolve_device(args.device)
    rank, world, device = runtime.setup_distributed(device)
    out = Path(args.out)
    main_proc = rank == 0
    done = finished(out, args)
    if done is not None:
        if main_proc:
            print(f"{out} already holds a finished {args.task} run ({done['step']} steps); nothing to do", flush=True)
        return done
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
    provenance = runtime.print_header("pretrain", vars(args)) if main_proc else {}
    runtime.seed_everything(args.seed + rank)
    cuda = device.type == "cuda"

    loaded = scans.load_cases(training_cases(args), with_label=False, progress=main_proc)
    encoder = models.create_encoder(args.encoder, in_chans=1)
    views, model, info = TASKS[args.task].build(args, encoder)
    dataset = scans.UnlabelledSlices(loaded, size=tuple(args.size), axis=args.axis, transform=views)
    sampler = runtime.ResumableSampler(len(dataset), args.batch_size, args.seed, rank, world)
    per_epoch = sampler.batches_per_epoch
    total = args.steps if args.steps > 0 else args.epochs * per_epoch
    warmup = max(1, int(args.warmup_fraction * total))
    workers = args.workers if args.workers >= 0 else (0 if (os.cpu_count() or 1) <= 2 else min(8, os.cpu_count() // 2))

    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and cuda)
    step, elapsed_before = 0, 0.0
    ckpt = runtime.load_checkpoint(out)
    if ckpt is not None:
        check_resume(ckpt, args)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        runtime.restore_rng(ckpt["rng"])
        step, elapsed_before = ckpt["step"], ckpt.get("elapsed_s", 0.0)
        if main_proc:
            print(f"resuming from {out / runtime.CHECKPOINT} at step {step}/{total}", flush=True)
    elif main_proc:
        scans.write_json_atomic({**vars(args), "provenance": provenance, "slices": len(dataset),
                                 "cases": [c.case_id for c in loaded], "steps_total": total}, out / "config.json")
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None) if world > 1 else model

    def save_checkpoint():
        if main_proc:
            runtime.atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "scaler": scaler.state_dict(), "step": step, "args": vars(args),
                                       "elapsed_s": elapsed_before + time.time() - t_start,
                                       "rng": runtime.capture_rng()}, out / runtime.CHECKPOINT)

    writer = None
    if main_proc:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out))
    log = runtime.JsonlLog(out / "log.jsonl", resume_step=step, enabled=main_proc)
    stop = runtime.StopSignal()
    bar = tqdm(total=total, initial=step, desc=f"pretrain {args.task}", unit="step", disable=not main_proc, dynamic_ncols=True)
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    t_last, n_last = time.perf_counter(), 0
    model.train()
    while step < total and not stop:
        epoch, start = divmod(step, per_epoch)
        sampler.set_epoch(epoch, start)
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                            worker_init_fn=runtime.worker_init, pin_memory=cuda, drop_last=True)
        for i, batch in enumerate(loader):
            lr = runtime.lr_at(step, total, args.lr, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = to_device(batch, device, cuda)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                res = net(batch)
            loss = res["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            n_last += args.batch_size * world
            bar.update(1)
            if step % args.log_every == 0 or step == total or i == 0:
                loss_v, acc_v = float(loss.detach()), float(res["accuracy"])
                if loss_v != loss_v:
                    raise FloatingPointError(f"loss is NaN at step {step}")
                rate = n_last / max(1e-9, time.perf_counter() - t_last)
                t_last, n_last = time.perf_counter(), 0
                seen = step * args.batch_size * world
                bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc_v:.3f}", refresh=False)
                log.write(step=step, epoch=epoch, images=seen, loss=loss_v, accuracy=acc_v, lr=lr, images_per_s=rate)
                if writer:
                    writer.add_scalar(f"pretrain/{args.task}/loss", loss_v, seen)
                    writer.add_scalar(f"pretrain/{args.task}/accuracy", acc_v, seen)
                    writer.add_scalar(f"pretrain/{args.task}/lr", lr, seen)
                    writer.add_scalar(f"pretrain/{args.task}/images_per_s", rate, seen)
                    if i == 0:
                        writer.add_images(f"pretrain/{args.task}/views", model.preview(batch).float().cpu(), seen)
            if args.ckpt_every and step % args.ckpt_every == 0:
                save_checkpoint()
            if stop or step >= total:
                break
        save_checkpoint()
    bar.close()
    stop.close()
    if writer:
        writer.flush()
    if stop:
        if main_proc:
            print(f"stopped by signal {stop.received} at step {step}/{total}; checkpoint saved, run again to resume", flush=True)
        return {"status": "interrupted", "step": step, "steps_total": total}

    summary = {"status": "done", "task": args.task, "encoder": args.encoder, "step": step, "steps_total": total,
               "final_accuracy": final_accuracy(out / "log.jsonl", total - per_epoch), "chance": info["chance"],
               "slices": len(dataset), "cases": len(loaded), "world_size": world,
               "wall_time_s": round(elapsed_before + time.time() - t_start, 1)}
    if main_proc:
        meta = {"pretext": args.task, "data": str(args.data), "split": str(args.split),
                "train_cases": [c.case_id for c in loaded], "config": vars(args),
                "commit": provenance.get("commit"), "dirty": provenance.get("dirty"), "steps": step,
                "final_accuracy": summary["final_accuracy"]}
        if "permutations" in info:
            meta["permutations"] = info["permutations"]
        models.save_encoder(out / "encoder.pt", encoder, **meta)
        scans.write_json_atomic(summary, out / "summary.json")
        print(f"done: {args.task} accuracy {summary['final_accuracy'] or 0:.3f} over the last epoch "
              f"(chance {info['chance']:.3f}) -> {out / 'encoder.pt'}", flush=True)
        if writer:
            writer.close()
    return summary


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.slurm:
        from slurm.submit import submit_pretrain
        return submit_pretrain(args, argv)
    try:
        res = run(args)
    except (scans.ScanError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        runtime.cleanup_distributed()
    return 0 if res["status"] == "done" else 143
