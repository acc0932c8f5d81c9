"""Fine-tune a U-Net or a TransUNet at a label fraction, then score per-volume 3D Dice on the test set.

    python -m scans split data/msd_hippocampus --test-fraction 0.2 --seed 0 \
        --fractions 0.01 0.1 1.0 --seeds 0 1 2 --out splits.json
    python -m finetune --arch unet --encoder unet_tiny --init random --fraction 1.0 --seed 0 \
        --data data/msd_hippocampus --split splits.json --out runs/ft/unet_random_100_s0
    python -m finetune --arch transunet --init runs/pretrain/rotation/encoder.pt --fraction 0.1 \
        --seed 0 --split splits.json --out runs/ft/transunet_rotation_10_s0
    python -m finetune --arch unet --encoder resnet18 --init imagenet \
        --imagenet-weights resnet18.pth --fraction 0.01 --seed 0 --split splits.json --out RUN_DIR
    python -m finetune ... --device cuda --amp --steps 4000 --batch-size 64    # one GPU

The defaults are the quick CPU profile, tuned on a validation split of the training pool:
48x64 slices, 1000 AdamW steps of 32 at lr 3e-3 (5% warm-up, cosine), half of the samples
augmented; about 2 minutes for unet_tiny and 3 for TransUNet tiny on 2 cores. Writes RUN_DIR/{config.json, log.jsonl, checkpoint.pt, metrics.json} and
TensorBoard events (losses, lr, validation Dice, test overlays, hparams) in RUN_DIR. Running the
same command again resumes from RUN_DIR/checkpoint.pt (written every --ckpt-every steps and on
SIGTERM/SIGUSR1) and ends at the same step count; once metrics.json exists with the same
config, the run is reported as done and not repeated.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import deque
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import models
import scans
from pretrain import runtime
from scans.augment import segmentation_augment

from . import data
from .evaluate import evaluate_cases, overlay_panel, panel_slices
from .losses import LOSSES, SegmentationLoss

# options that do not change the numbers a run produces (ignored when matching configs)
NOT_RESULTS = ("out", "workers", "log_every", "ckpt_every", "stop_at_step")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m finetune", description=__doc__, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=sorted(models.ARCHS))
    p.add_argument("--encoder", default=None,
                   help="encoder registry name (python -m models list); optional with --init PATH/encoder.pt")
    p.add_argument("--init", default="random",
                   help="random, imagenet (with --imagenet-weights) or PATH/encoder.pt from python -m pretrain")
    p.add_argument("--imagenet-weights", default=None, metavar="FILE",
                   help="local timm weights file (state_dict of timm.create_model(ENCODER)) for --init imagenet")
    p.add_argument("--fraction", type=float, required=True, help="label fraction; must be in the split file")
    p.add_argument("--seed", type=int, default=0, help="label-fraction seed of the split file and training seed")
    p.add_argument("--data", default="data/msd_hippocampus", help="dataset folder (MSD layout, labelled)")
    p.add_argument("--split", required=True, help="split JSON from `python -m scans split`")
    p.add_argument("--out", required=True, help="run folder")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    g.add_argument("--batch-size", type=int, default=32, help="slices per step")
    g.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup-fraction", type=float, default=0.05, help="fraction of the steps in linear warm-up, then cosine")
    g.add_argument("--freeze-encoder-steps", type=int, default=0,
                   help="keep the encoder frozen (weights and BatchNorm statistics) for the first N steps")
    g.add_argument("--loss", choices=LOSSES, default="ce_dice")
    g.add_argument("--class-weights", type=float, nargs="+", default=None, metavar="W",
                   help="one weight per class (background first) for the CE / focal term")
    g.add_argument("--focal-gamma", type=float, default=2.0)
    g.add_argument("--aug", choices=("default", "light", "none"), default="default", help="augmentation level")
    g.add_argument("--aug-prob", type=float, default=0.5, help="fraction of the samples that are augmented (the rest as they are)")
    g.add_argument("--fg-repeat", type=int, default=1, help="list slices with foreground N times per epoch (1: uniform)")
    g = p.add_argument_group("data and evaluation")
    g.add_argument("--size", type=int, nargs=2, default=[48, 64], help="training slice size H W after pad/crop")
    g.add_argument("--axis", type=int, default=2, help="slice axis of the volumes")
    g.add_argument("--num-classes", type=int, default=0, help="0: from dataset.json, else max training label + 1")
    g.add_argument("--val-cases", type=int, default=0,
                   help="hold N of the fraction's cases out for validation Dice (only when it has >= 5 cases)")
    g.add_argument("--eval-every", type=int, default=200, help="validation every N steps (with --val-cases)")
    g.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    g.add_argument("--max-test-cases", type=int, default=0, help="evaluate on the first N test cases only (tests)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto")
    g.add_argument("--amp", action="store_true", help="mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers (results do not depend on it)")
    g.add_argument("--log-every", type=int, default=20)
    g.add_argument("--ckpt-every", type=int, default=200, help="checkpoint every N steps (and on SIGTERM / at the end)")
    g.add_argument("--stop-at-step", type=int, default=0, help="act as if SIGTERM came after step N (tests resume)")
    return p


def result_config(args) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_RESULTS}


def check_same_config(old: dict, args, where: Path) -> None:
    new = result_config(args)
    old = {k: v for k, v in old.items() if k not in NOT_RESULTS}
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"{where} belongs to a run with other settings ({'; '.join(diff)}); use another --out")


def check_args(args) -> None:
    for name in ("steps", "freeze_encoder_steps", "max_test_cases", "val_cases", "num_classes", "workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("batch_size", "log_every", "ckpt_every", "eval_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.warmup_fraction < 1:
        raise ValueError(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    if args.axis not in (0, 1, 2):
        raise ValueError(f"--axis must be 0, 1 or 2, got {args.axis}")
    if args.imagenet_weights and args.init != "imagenet":
        raise ValueError(f"--imagenet-weights is only used with --init imagenet (got --init {args.init})")


def build_model(args, num_classes: int):
    """The segmenter with its initial encoder weights, and a dict saying where they came from."""
    kw = {"img_size": tuple(args.size)} if args.arch == "transunet" else {}
    if args.init in ("random", "imagenet"):
        if not args.encoder:
            raise ValueError(f"--encoder is required with --init {args.init}")
        if args.init == "random":
            return models.create_segmenter(args.arch, args.encoder, num_classes, **kw), {"init": "random", "encoder": args.encoder}
        if not args.imagenet_weights:
            raise ValueError("--init imagenet needs --imagenet-weights FILE, a local timm weights file for "
                             f"{args.encoder!r} (nothing is downloaded)")
        model = models.create_segmenter(args.arch, args.encoder, num_classes, pretrained_file=args.imagenet_weights, **kw)
        print(f"init: ImageNet weights for {args.encoder} from {args.imagenet_weights}", flush=True)
        return model, {"init": "imagenet", "encoder": args.encoder, "path": str(args.imagenet_weights)}
    path = Path(args.init)
    if not path.is_file():
        raise FileNotFoundError(f"--init {args.init}: no such encoder checkpoint (expected random, imagenet or PATH/encoder.pt)")
    meta = models.load_checkpoint_meta(path)
    if args.encoder and args.encoder != meta["name"]:
        raise ValueError(f"--encoder {args.encoder} does not match encoder {meta['name']!r} of checkpoint {path}")
    drop = {"in_chans"} | ({"max_reduction"} if args.arch == "transunet" else set())
    enc_kwargs = {k: v for k, v in meta["config"].items() if k not in drop}
    model = models.create_segmenter(args.arch, meta["name"], num_classes, encoder_kwargs=enc_kwargs, **kw)
    info = models.load_encoder(model, path)
    pretext = info["meta"].get("pretext", "?")
    print(f"init: loaded {info['loaded']} encoder tensors of {info['name']} (pretext {pretext}) from {path}"
          + (f"; {len(info['skipped'])} deeper tensors not used by {args.arch}" if info["skipped"] else ""), flush=True)
    return model, {"init": "checkpoint", "encoder": meta["name"], "path": str(path), "pretext": pretext,
                   "loaded": info["loaded"], "skipped": len(info["skipped"]), "commit": info["meta"].get("commit")}


def set_encoder_frozen(model, frozen: bool) -> None:
    """Freeze (no gradients, BatchNorm statistics fixed) or unfreeze the encoder."""
    for p in model.encoder.parameters():
        p.requires_grad_(not frozen)
    model.encoder.train(not frozen and model.training)


def clean(x):
    """NaN / inf -> None, recursively, so metrics.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x


def run(args) -> dict:
    """Fine-tune and evaluate; return metrics.json's dict (``status`` "done") or ``{"status": "interrupted", ...}``."""
    t_start = time.time()
    tty = sys.stderr.isatty()  # progress bars on a terminal, a few plain lines in log files
    out = Path(args.out)
    done = out / "metrics.json"
    if done.is_file():
        old = json.loads(done.read_text())
        check_same_config(old.get("config", {}), args, done)
        print(f"already done: {done} (mean test Dice {old['mean_dice']:.4f})", flush=True)
        return old
    check_args(args)
    device = runtime.resolve_device(args.device)
    cuda = device.type == "cuda"
    train_cases, val_cases, test_cases = data.select(args.data, args.split, args.fraction, args.seed,
                                                     args.val_cases, args.max_test_cases)
    loaded = scans.load_cases(train_cases + val_cases, progress=tty)
    train_loaded, val_loaded = loaded[: len(train_cases)], loaded[len(train_cases):]
    class_names = data.read_class_names(args.data)
    num_classes = args.num_classes or data.infer_num_classes(class_names, train_loaded)
    loss_fn = SegmentationLoss(args.loss, num_classes, args.class_weights, args.focal_gamma)
    runtime.seed_everything(args.seed)
    model, init_info = build_model(args, num_classes)
    dataset = data.TrainSlices(train_loaded, tuple(args.size), args.axis, segmentation_augment(args.aug),
                               args.fg_repeat, args.seed, min_len=args.batch_size, aug_prob=args.aug_prob)
    sampler = runtime.ResumableSampler(len(dataset), args.batch_size, args.seed)
    total, per_epoch = args.steps, sampler.batches_per_epoch
    warmup = max(1, round(args.warmup_fraction * total))

    out.mkdir(parents=True, exist_ok=True)
    provenance = runtime.print_header("finetune", vars(args))
    print(f"train {len(train_cases)} cases ({dataset.num_slices} slices, {dataset.num_foreground} with foreground), "
          f"val {len(val_cases)}, test {len(test_cases)}; {num_classes} classes; "
          f"{models.count_parameters(model) / 1e6:.2f} M params; {total} steps of {args.batch_size}", flush=True)
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    loss_fn.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and cuda)
    step, elapsed = 0, 0.0
    ckpt = runtime.load_checkpoint(out)
    if ckpt is not None:
        check_same_config(ckpt["args"], args, out / runtime.CHECKPOINT)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        runtime.restore_rng(ckpt["rng"])
        step, elapsed = ckpt["step"], ckpt["elapsed"]
        print(f"resuming from {out / runtime.CHECKPOINT} at step {step}/{total}", flush=True)
    else:
        scans.write_json_atomic({"config": result_config(args), "args": vars(args), "provenance": provenance,
                                 "init": init_info, "num_classes": num_classes, "train_cases": [c.case_id for c in train_cases],
                                 "val_cases": [c.case_id for c in val_cases], "test_cases": [c.case_id for c in test_cases]},
                                out / "config.json")

    def save_checkpoint():
        runtime.atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scaler": scaler.state_dict(), "step": step, "args": vars(args),
                                   "elapsed": elapsed + time.time() - t_start, "rng": runtime.capture_rng()},
                                  out / runtime.CHECKPOINT)

    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(out), purge_step=step * args.batch_size if step else None)
    log = runtime.JsonlLog(out / "log.jsonl", resume_step=step)
    stop = runtime.StopSignal()
    deterministic = torch.are_deterministic_algorithms_enabled()
    if not cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    recent = deque(maxlen=50)
    val_dice = None
    bar = tqdm(total=total, initial=step, desc=f"finetune {args.arch}", unit="step", dynamic_ncols=True, mininterval=2,
               disable=not tty)
    t_last, n_last = time.perf_counter(), 0
    try:
        model.train()
        while step < total and not stop:
            epoch, start = divmod(step, per_epoch)
            sampler.set_epoch(epoch, start)
            loader = DataLoader(dataset, batch_size=args.batch_size, sampler=data.EpochPositions(sampler),
                                num_workers=args.workers, worker_init_fn=runtime.worker_init, pin_memory=cuda,
                                drop_last=True, generator=torch.Generator().manual_seed(args.seed))
            for images, masks in loader:
                set_encoder_frozen(model, step < args.freeze_encoder_steps)
                lr = runtime.lr_at(step, total, args.lr, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
                if cuda:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                    logits = model(images)
                loss, parts = loss_fn(logits, masks)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                n_last += args.batch_size
                bar.update(1)
                recent.append(loss.detach())
                if step % args.log_every == 0 or step == total:
                    loss_v = float(torch.stack(list(recent)).mean())
                    if not math.isfinite(loss_v):
                        raise FloatingPointError(f"loss is {loss_v} at step {step}; lower --lr")
                    rate = n_last / max(1e-9, time.perf_counter() - t_last)
                    t_last, n_last = time.perf_counter(), 0
                    seen = step * args.batch_size
                    row = {"loss": loss_v, **{k: float(v) for k, v in parts.items()}}
                    bar.set_postfix(loss=f"{loss_v:.3f}", refresh=False)
                    if not tty and (step % (10 * args.log_every) == 0 or step == total):
                        print(f"step {step}/{total}: loss {loss_v:.4f}, lr {lr:.2e}, {rate:.0f} img/s", flush=True)
                    log.write(step=step, epoch=epoch, images=seen, lr=lr, images_per_s=rate, **row)
                    for k, v in row.items():
                        writer.add_scalar(f"train/{k}", v, seen)
                    writer.add_scalar("train/lr", lr, seen)
                    writer.add_scalar("train/images_per_s", rate, seen)
                if val_loaded and (step % args.eval_every == 0 or step == total):
                    _, val = evaluate_cases(model, val_loaded, num_classes, args.axis, device, amp=args.amp, size=args.size)
                    val_dice = val["mean_dice"]
                    log.write(step=step, val_dice=val_dice, val_hd95=val["mean_hd95"])
                    writer.add_scalar("val/dice", val_dice, step * args.batch_size)
                    writer.add_scalar("val/hd95", val["mean_hd95"], step * args.batch_size)
                    print(f"step {step}: validation Dice {val_dice:.4f}", flush=True)
                if args.stop_at_step and step == args.stop_at_step:
                    stop.received = "stop-at-step"
                if step % args.ckpt_every == 0 and step < total:
                    save_checkpoint()
                if stop or step >= total:
                    break
        save_checkpoint()
        bar.close()
        if stop:
            print(f"stopped ({stop.received}) at step {step}/{total}; checkpoint saved, run again to resume", flush=True)
            return {"status": "interrupted", "step": step, "steps_total": total}
        train_time = elapsed + time.time() - t_start

        t_eval = time.time()
        test_loaded = scans.load_cases(test_cases, progress=tty)
        per_case, summary = evaluate_cases(model, test_loaded, num_classes, args.axis, device, args.tta, args.amp,
                                           args.size, progress=tty)
        eval_time = time.time() - t_eval
        panel = overlay_panel(model, test_loaded, panel_slices(test_loaded, args.axis), args.axis, args.size, device)
        writer.add_image("test/image_label_prediction", panel, total * args.batch_size, dataformats="HWC")
        for k, v in summary["dice_per_class"].items():
            writer.add_scalar(f"test/dice_class{k}", v, total * args.batch_size)
        writer.add_scalar("test/mean_dice", summary["mean_dice"], total * args.batch_size)
        hparams = {"arch": args.arch, "encoder": init_info["encoder"], "init": init_info["init"] if init_info["init"] != "checkpoint"
                   else f"{init_info['pretext']}:{args.init}", "fraction": args.fraction, "seed": args.seed}
        writer.add_hparams(hparams, {"hparam/test_mean_dice": summary["mean_dice"],
                                     "hparam/test_mean_hd95": summary["mean_hd95"]}, run_name=".")
    finally:
        bar.close()
        writer.close()
        stop.close()
        torch.use_deterministic_algorithms(deterministic)

    metrics = {"status": "done", **summary, "class_names": class_names, "num_classes": num_classes,
               "cases": per_case, "train_cases": [c.case_id for c in train_cases],
               "val_cases": [c.case_id for c in val_cases], "test_cases": [c.case_id for c in test_cases],
               "val_dice": val_dice, "final_train_loss": float(torch.stack(list(recent)).mean()) if recent else None,
               "arch": args.arch, "encoder": init_info["encoder"], "init": init_info, "fraction": args.fraction,
               "seed": args.seed, "steps": total, "params": models.count_parameters(model),
               "config": result_config(args), "commit": provenance["commit"], "dirty": provenance["dirty"],
               "argv": provenance["argv"], "machine": provenance["machine"], "device": str(device),
               "train_time_s": round(train_time, 2), "eval_time_s": round(eval_time, 2),
               "wall_time_s": round(train_time + eval_time, 2)}
    scans.write_json_atomic(clean(metrics), done)
    per_class = ", ".join(f"{(class_names or {}).get(k, 'class ' + k)} {v:.4f}" for k, v in summary["dice_per_class"].items())
    print(f"done: mean test Dice {summary['mean_dice']:.4f} ({per_class}), mean HD95 {summary['mean_hd95']:.2f} mm "
          f"over {len(test_cases)} test cases; {metrics['wall_time_s']:.0f} s -> {done}", flush=True)
    return json.loads(done.read_text())


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        res = run(args)
    except (scans.ScanError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if res["status"] == "done" else 143
