"""Fine-tune a U-Net or a TransUNet at a label fraction, then score per-volume 3D Dice on the test set.

    python -m scans split data/msd_hippocampus --test-fraction 0.2 --seed 0 \
        --fractions 0.01 0.1 1.0 --seeds 0 1 2 --out splits.json
    python -m finetune --arch unet --encoder unet_tiny --init random --fraction 1.0 --label-seed 0 --seed 0 \
        --data data/msd_hippocampus --split splits.json --out runs/ft/unet_random_100_s0
    python -m finetune --arch transunet --init runs/pretrain/rotation/encoder.pt --fraction 0.1 \
        --seed 0 --split splits.json --out runs/ft/transunet_rotation_10_s0
    python -m finetune --arch unet --encoder resnet18 --init imagenet \
        --imagenet-weights resnet18.pth --fraction 0.01 --seed 0 --split splits.json --out RUN_DIR
    python -m finetune ... --device cuda --amp --steps 4000 --batch-size 64    # one GPU
    python -m slurm submit finetune --profile slurm/profiles/example-gpu.yaml --arch unet ...

The defaults are the quick CPU profile, tuned on a validation split of the training pool:
48x64 slices, 1000 AdamW steps of 32 at lr 3e-3 (5% warm-up, cosine), half of the samples
augmented; about 2 minutes for unet_tiny and 3 for TransUNet tiny on 2 cores. Writes RUN_DIR/{config.json, log.jsonl, checkpoint.pt, metrics.json} and
TensorBoard events (losses, lr, validation Dice, test overlays, hparams) in RUN_DIR, and at the end
RUN_DIR/model.pt (the segmenter with how the evaluation applied it: slice axis, size, spacing,
normalisation, flips, TTA, AMP; python -m finetune.predict and finetune.export read it). Running the
same command again resumes from RUN_DIR/checkpoint.pt (written every --ckpt-every steps and on
SIGTERM/SIGUSR1/SIGUSR2/SIGINT) and ends at the same step count; once metrics.json exists, the same
command reports the run as done and repeats nothing. Any other result-affecting argument in the same
RUN_DIR is refused (exit code 2); so is a second process while one works on RUN_DIR, and so are
labels outside the dataset's classes, before anything is written.
"""
from __future__ import annotations

import argparse
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

import engine
import models
import scans
from scans.augment import segmentation_augment

from . import data
from . import board
from .evaluate import evaluate_cases
from .inference import Inference
from .losses import LOSSES, SegmentationLoss
from .modelfile import save_model

METRICS = "metrics.json"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m finetune", description=__doc__, add_help=add_help,
                                parents=[engine.runtime_parser(log_every=20, ckpt_every=200, workers=0)],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=sorted(models.ARCHS))
    p.add_argument("--encoder", default=None,
                   help="encoder registry name (python -m models list); optional with --init PATH/encoder.pt")
    p.add_argument("--init", default="random",
                   help="random, imagenet (with --imagenet-weights) or PATH/encoder.pt from python -m pretrain")
    p.add_argument("--imagenet-weights", default=None, metavar="FILE",
                   help="local timm weights file (state_dict of timm.create_model(ENCODER)) for --init imagenet")
    p.add_argument("--fraction", type=float, required=True, help="label fraction; must be in the split file")
    p.add_argument("--label-seed", type=int, default=0,
                   help="label seed: which labelled volumes of the split file make up the fraction")
    p.add_argument("--seed", type=int, default=0, help="training seed: weights of the new layers, data order, augmentation")
    p.add_argument("--data", default="data/msd_hippocampus", help="dataset folder (MSD layout, labelled)")
    p.add_argument("--split", required=True, help="split JSON from `python -m scans split`")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    g.add_argument("--batch-size", type=int, default=32, help="slices per step")
    g.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup-fraction", type=float, default=0.05, help="fraction of the steps in linear warm-up, then cosine")
    g.add_argument("--freeze-encoder-steps", type=int, default=0,
                   help="keep the encoder frozen (weights and BatchNorm statistics) for the first N steps")
    g.add_argument("--encoder-lr-scale", type=float, default=1.0,
                   help="the encoder's learning rate relative to the rest of the network (gentle fine-tuning of "
                        "transferred weights: e.g. 0.1)")
    g.add_argument("--loss", choices=LOSSES, default="ce_dice")
    g.add_argument("--class-weights", type=float, nargs="+", default=None, metavar="W",
                   help="one weight per class (background first) for the CE / focal term")
    g.add_argument("--focal-gamma", type=float, default=2.0)
    g.add_argument("--aug", choices=("default", "light", "none"), default="default", help="augmentation level")
    g.add_argument("--flip-axes", nargs="+", default=["auto"], metavar="AXIS",
                   help="augmentation and --tta: " + scans.FLIP_AXES_HELP)
    g.add_argument("--aug-prob", type=float, default=0.5, help="fraction of the samples that are augmented (the rest as they are)")
    g.add_argument("--fg-repeat", type=int, default=1, help="list slices with foreground N times per epoch (1: uniform)")
    g.add_argument("--fg-patch", type=float, default=1 / 3,
                   help="share of the patches of slices larger than --size centred on foreground (nnU-Net: a third)")
    g = p.add_argument_group("data and evaluation")
    g.add_argument("--size", type=int, nargs=2, default=[48, 64],
                   help="training patch size H W: smaller slices are centre-padded, larger ones give random patches "
                        "(evaluation and predict use whole slices)")
    g.add_argument("--spacing", type=float, nargs=2, default=None, metavar=("MM", "MM"),
                   help="resample the slices' two axes (in volume axis order) to this spacing before training and "
                        "prediction; predictions go back to each scan's own grid before scoring and saving")
    g.add_argument("--axis", type=int, default=2, help="slice axis of the volumes")
    g.add_argument("--num-classes", type=int, default=0,
                   help="0: from dataset.json, else the largest training label + 1 (any other label is refused)")
    g.add_argument("--val-cases", type=int, default=0,
                   help="hold whole subjects with at least N of the fraction's cases out for validation Dice "
                        "(only when it has >= 5 cases; they come out of the fraction's training cases)")
    g.add_argument("--eval-every", type=int, default=100,
                   help="validation (--val-cases) and watch Dice (--watch-cases) every N steps")
    g.add_argument("--watch-cases", type=int, default=3,
                   help="a Dice curve to watch in TensorBoard (watch/dice) on N training-pool cases outside the "
                        "labelled fraction and its subjects; never test cases, never used to pick a step "
                        "(changes no number)")
    g.add_argument("--tta", action="store_true", help="test-time augmentation: average in the flips of --flip-axes")
    g.add_argument("--max-test-cases", type=int, default=0, help="evaluate on the first N test cases only (tests)")
    g.add_argument("--save-predictions", action="store_true",
                   help="also write each test case's predicted segmentation to RUN_DIR/predictions/ in the scan's "
                        "geometry (changes no number; for a finished run use python -m finetune.predict)")
    scans.add_normalization_args(p)
    return p


# Fine-tuning's own arguments that change no number (beside engine.NOT_IDENTITY), and why.
NOT_IDENTITY = {
    "save_predictions": "also writes the test predictions it scores",
    "watch_cases": "a Dice curve on a few training-pool cases, for TensorBoard only",
}


def run_identity(args) -> dict:
    """What makes two fine-tuning runs the same run: every result-affecting argument (the device as
    its type), the split and init files."""
    init_file = args.init if args.init not in ("random", "imagenet") else None
    ident = engine.run_identity(vars(args), files={"split": args.split, "init": init_file,
                                                   "imagenet_weights": args.imagenet_weights},
                                not_identity=NOT_IDENTITY)
    ident["flip_axes"] = list(resolve_flip_axes(args))  # "auto" as the dataset's protocol resolves it
    return ident


def resolve_flip_axes(args) -> tuple[int, ...]:
    """Volume axes that may be flipped: ``--flip-axes`` or, for ``auto``, the dataset's protocol.json."""
    try:
        return scans.resolve_flip_axes(args.flip_axes, args.data)
    except ValueError as e:
        raise engine.ConfigError(str(e)) from None


def slice_flip_axes(args) -> tuple[int, ...]:
    """The allowed volume flip axes as axes of the 2D slices cut along ``--axis`` (the slice axis itself drops out)."""
    return scans.slice_flips(resolve_flip_axes(args), args.axis)


def check_args(args) -> None:
    """Refuse, before anything is created, options that cannot run (ConfigError / ValueError / FileNotFoundError)."""
    engine.check_runtime_args(args)
    engine.resolve_device(args.device)
    scans.check_fraction(args.fraction)
    if min(args.size) < 1:
        raise engine.ConfigError(f"--size must be positive, got {args.size}")
    if args.class_weights is not None and not all(math.isfinite(w) and w >= 0 for w in args.class_weights):
        raise engine.ConfigError(f"--class-weights must be finite numbers >= 0, got {args.class_weights}")
    engine.check_finite("--focal-gamma", args.focal_gamma, 0)
    engine.check_finite("--lr", args.lr, 0, inclusive=False)
    engine.check_finite("--encoder-lr-scale", args.encoder_lr_scale, 0)
    engine.check_finite("--weight-decay", args.weight_decay, 0)
    if not 0 <= args.warmup_fraction < 1:
        raise engine.ConfigError(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    for name in ("steps", "freeze_encoder_steps", "max_test_cases", "val_cases", "watch_cases", "num_classes"):
        if getattr(args, name) < 0:
            raise engine.ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("batch_size", "eval_every"):
        if getattr(args, name) < 1:
            raise engine.ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.axis not in (0, 1, 2):
        raise engine.ConfigError(f"--axis must be 0, 1 or 2, got {args.axis}")
    scans.normalization_of(args)  # ValueError for --window without --norm ct and the reverse
    if args.spacing and min(args.spacing) <= 0:
        raise engine.ConfigError(f"--spacing must be > 0 mm, got {args.spacing}")
    if args.imagenet_weights and args.init != "imagenet":
        raise engine.ConfigError(f"--imagenet-weights is only used with --init imagenet (got --init {args.init})")
    if args.init in ("random", "imagenet") and not args.encoder:
        raise engine.ConfigError(f"--encoder is required with --init {args.init}")
    if args.init == "imagenet":
        if not args.imagenet_weights:
            raise engine.ConfigError("--init imagenet needs --imagenet-weights FILE, a local timm weights file for "
                                     f"{args.encoder!r} (nothing is downloaded)")
        models.check_imagenet_weights(args.encoder, args.imagenet_weights)
    if args.init not in ("random", "imagenet"):
        check_init_file(args)


def build_model(args, num_classes: int):
    """The segmenter with its initial weights, and a dict saying where they came from (``transferred``: the names
    of the tensors a network file gave)."""
    kw = {"img_size": tuple(args.size)} if args.arch == "transunet" else {}
    if args.init == "random":
        return (models.create_segmenter(args.arch, args.encoder, num_classes, **kw),
                {"init": "random", "encoder": args.encoder, "encoder_kwargs": {}})
    if args.init == "imagenet":
        model = models.create_segmenter(args.arch, args.encoder, num_classes, pretrained_file=args.imagenet_weights, **kw)
        print(f"init: ImageNet weights for {args.encoder} from {args.imagenet_weights}", flush=True)
        return model, {"init": "imagenet", "encoder": args.encoder, "encoder_kwargs": {}, "path": str(args.imagenet_weights)}
    path = Path(args.init)
    if models.checkpoint_format(path) == models.NETWORK_FORMAT:
        return network_init(args, path, num_classes, kw)
    meta = models.load_checkpoint_meta(path)
    drop = {"in_chans"} | ({"max_reduction"} if args.arch == "transunet" else set())
    enc_kwargs = {k: v for k, v in meta["config"].items() if k not in drop}
    model = models.create_segmenter(args.arch, meta["name"], num_classes, encoder_kwargs=enc_kwargs, **kw)
    info = models.load_encoder(model, path)
    pretext = info["meta"].get("pretext", "?")
    print(f"init: loaded {info['loaded']} encoder tensors of {info['name']} (pretext {pretext}) from {path}"
          + (f"; {len(info['skipped'])} deeper tensors not used by {args.arch}" if info["skipped"] else ""), flush=True)
    note_normalisation(args, info["meta"].get("config") or {})
    return model, {"init": "checkpoint", "encoder": meta["name"], "encoder_kwargs": enc_kwargs, "path": str(path),
                   "pretext": pretext, "loaded": info["loaded"], "skipped": len(info["skipped"]),
                   "commit": info["meta"].get("commit")}


def network_init(args, path: Path, num_classes: int, kw: dict):
    """The segmenter a network file describes, every tensor but the output layer loaded from it exactly."""
    meta = models.load_network_meta(path)
    enc_kwargs = {k: v for k, v in meta["encoder_config"].items() if k != "in_chans"}
    model = models.create_segmenter(args.arch, meta["encoder"], num_classes, encoder_kwargs=enc_kwargs, **kw)
    transferred = models.load_network(model, path)
    pretext = meta["meta"].get("pretext", "?")
    print(f"init: loaded {len(transferred)} of {len(model.state_dict())} tensors of the {args.arch} (pretext {pretext}) "
          f"from {path}; the output layer is new", flush=True)
    note_normalisation(args, meta["meta"].get("config") or {})
    return model, {"init": "network", "encoder": meta["encoder"], "encoder_kwargs": enc_kwargs, "path": str(path),
                   "pretext": pretext, "loaded": len(transferred), "transferred": transferred,
                   "commit": meta["meta"].get("commit")}


def note_normalisation(args, pretrain_config: dict) -> None:
    """Say so when the pretraining run normalised its scans otherwise than this run does."""
    pre_norm = (pretrain_config.get("norm", "percentile"), [float(v) for v in pretrain_config.get("window") or []])
    if pre_norm != (args.norm, [float(v) for v in args.window or []]):
        window = lambda w: f" --window {w[0]:g} {w[1]:g}" if w else ""  # noqa: E731
        print(f"note: the encoder was pretrained with --norm {pre_norm[0]}{window(pre_norm[1])}, this run normalises "
              f"with --norm {args.norm}{window(args.window)}: its features may not transfer as they should", flush=True)


def check_init_file(args) -> None:
    """``--init PATH``: an encoder.pt, or a network.pt of this architecture (and encoder, when one is named);
    refused in one line before anything is written."""
    if not Path(args.init).is_file():
        raise FileNotFoundError(f"--init {args.init}: no such file (expected random, imagenet, PATH/encoder.pt "
                                "or PATH/network.pt)")
    if models.checkpoint_format(args.init) == models.NETWORK_FORMAT:
        meta = models.load_network_meta(args.init)
        if meta["arch"] != args.arch:
            raise engine.ConfigError(f"--init {args.init} holds a {meta['arch']} network; --arch is {args.arch} "
                                     f"(use the network.pt of a --arch {args.arch} pretraining, or its encoder.pt)")
        name = meta["encoder"]
    else:
        name = models.load_checkpoint_meta(args.init)["name"]  # a clear error for a training checkpoint or other file
    if args.encoder and args.encoder != name:
        raise engine.ConfigError(f"--encoder {args.encoder} does not match encoder {name!r} of {args.init}")


def param_groups(model, encoder_lr_scale: float) -> list[dict] | None:
    """The encoder's parameters at ``encoder_lr_scale`` times the learning rate, the rest at it (None: one group)."""
    if encoder_lr_scale == 1:
        return None
    enc = {id(p) for p in model.encoder.parameters()}
    return [{"params": list(model.encoder.parameters()), "lr_scale": encoder_lr_scale},
            {"params": [p for p in model.parameters() if id(p) not in enc], "lr_scale": 1.0}]


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


class SegmentationTrainer(engine.Trainer):
    """The fine-tuning step: segmentation loss (pixel term + Dice), encoder freezing, periodic
    validation (``val_loaded``) and watch Dice (``watch_loaded``)."""

    def __init__(self, model, loss_fn, dataset, sampler, args, writer, val_loaded, num_classes, device,
                 inference: Inference, watch_loaded=()):
        self.model, self.loss_fn, self.dataset, self.sampler, self.args = model, loss_fn, dataset, sampler, args
        self.writer, self.val_loaded, self.num_classes, self.device = writer, val_loaded, num_classes, device
        self.inference = inference
        self.watch_loaded = list(watch_loaded)
        self.recent = deque(maxlen=50)  # the logged loss is the mean of the last 50 steps
        self.val_dice = None

    def batches(self, start, total):
        return engine.make_loader(self.dataset, self.sampler.set_range(start, total), self.args.batch_size,
                                  self.args.workers, self.device, self.args.seed)

    def before_step(self, step):
        set_encoder_frozen(self.model, step < self.args.freeze_encoder_steps)

    def forward(self, batch):
        images, masks = batch
        logits = self.model(images)
        with torch.autocast(images.device.type, enabled=False):  # the loss in float32
            loss, parts = self.loss_fn(logits.float(), masks)
        self.recent.append(loss.detach())
        return {"loss": loss, **parts}

    def final_loss(self) -> float | None:
        return float(torch.stack(list(self.recent)).mean()) if self.recent else None

    def log_row(self, step, out):
        return {"loss": self.final_loss(), **{k: float(v) for k, v in out.items() if k != "loss"}}

    def evaluate(self, step):
        if not (self.val_loaded or self.watch_loaded) or not (step % self.args.eval_every == 0 or step == self.args.steps):
            return {}
        row = {}
        for name, loaded in (("val", self.val_loaded), ("watch", self.watch_loaded)):
            if loaded:
                _, res = evaluate_cases(self.model, loaded, self.num_classes, self.inference, self.device)
                self.writer.add_scalar(f"{name}/dice", res["mean_dice"], step)
                self.writer.add_scalar(f"{name}/hd95_mm", res["mean_hd95"], step)
                row[f"{name}_dice"], row[f"{name}_hd95"] = res["mean_dice"], res["mean_hd95"]
        if self.val_loaded:
            self.val_dice = row["val_dice"]
            print(f"step {step}: validation Dice {self.val_dice:.4f}", flush=True)
        return row


def run(args) -> dict:
    """Fine-tune and evaluate; return metrics.json's dict (``status`` "done") or ``{"status": "interrupted", ...}``."""
    t_start = time.time()
    check_args(args)
    folder = engine.RunFolder(args.out, run_identity(args), METRICS)
    done = folder.finished()
    if done is not None:
        print(f"already done: {folder.path / METRICS} (mean test Dice {done['mean_dice']:.4f})", flush=True)
        return done
    cases = data.select(args.data, args.split, args.fraction, args.label_seed, args.val_cases, args.max_test_cases,
                        args.watch_cases)
    class_names = data.read_class_names(args.data)
    num_classes = args.num_classes or data.infer_num_classes(class_names, cases)
    data.check_labels(cases, num_classes, class_names)  # a label outside the classes: refused before anything starts
    with folder:
        return train(args, folder, cases, class_names, num_classes, t_start)


@dataclass
class Setup:
    """What a fine-tuning run is made of, built before its first step."""

    model: torch.nn.Module
    init_info: dict
    loss_fn: SegmentationLoss
    dataset: data.TrainSlices
    sampler: engine.ResumableSampler
    inference: Inference
    val_loaded: list
    watch_loaded: list


def inference_of(args) -> Inference:
    """How this run's network is applied to a scan: by its evaluation, and later by predict and export."""
    return Inference(axis=args.axis, size=tuple(args.size), normalization=scans.normalization_of(args),
                     spacing=tuple(args.spacing) if args.spacing else None, flip_axes=resolve_flip_axes(args),
                     tta=args.tta, amp=args.amp)


def build(args, cases: data.Selection, num_classes: int) -> Setup:
    """Read the labelled cases, build the segmenter with its initial weights, the loss and the training slices."""
    inference = inference_of(args)
    loaded = scans.load_cases(cases.train + cases.val + cases.watch, norm=inference.normalization,
                              progress=engine.on_terminal())
    n_train, n_val = len(cases.train), len(cases.val)
    train_loaded = loaded[:n_train]
    loss_fn = SegmentationLoss(args.loss, num_classes, args.class_weights, args.focal_gamma)
    engine.seed_everything(args.seed)
    model, init_info = build_model(args, num_classes)
    if args.spacing:
        train_loaded = [data.resample_case(c, args.axis, args.spacing) for c in train_loaded]
    augment = segmentation_augment(args.aug, slice_flip_axes(args), gamma=inference.normalization.mode != "zscore")
    dataset = data.TrainSlices(train_loaded, tuple(args.size), args.axis, augment, args.fg_repeat, args.seed,
                               min_len=args.batch_size, aug_prob=args.aug_prob, fg_patch=args.fg_patch)
    sampler = engine.ResumableSampler(len(dataset), args.batch_size, args.seed)
    return Setup(model, init_info, loss_fn, dataset, sampler, inference, loaded[n_train:n_train + n_val],
                 loaded[n_train + n_val:])


def train(args, folder: engine.RunFolder, cases: data.Selection, class_names: dict | None, num_classes: int,
          t_start: float) -> dict:
    """Build the run, fit it through the engine's loop, then report: score the test set, write model.pt,
    metrics.json and the TensorBoard summaries."""
    device = engine.resolve_device(args.device)
    setup = build(args, cases, num_classes)
    provenance = engine.provenance()
    engine.print_header("finetune", folder, provenance)
    ds = setup.dataset
    print(f"train {len(cases.train)} cases ({ds.num_slices} slices, {ds.num_foreground} with foreground), "
          f"val {len(cases.val)}, watch {len(cases.watch)}, test {len(cases.test)}; {num_classes} classes; "
          f"{models.count_parameters(setup.model) / 1e6:.2f} M params; {args.steps} steps of {args.batch_size}"
          + (f"; {ds.num_larger} slices larger than {args.size[0]}x{args.size[1]} give random patches"
             if ds.num_larger else ""), flush=True)
    model = engine.prepare_model(setup.model, device)
    setup.loss_fn.to(device)
    state, log = engine.start_training(folder, model, device, t_start, lr=args.lr, weight_decay=args.weight_decay,
                                       amp=args.amp, param_groups=param_groups(model, args.encoder_lr_scale))
    ids = {f"{k}_cases": [c.case_id for c in getattr(cases, k)] for k in ("train", "val", "watch", "test")}
    if state.step == 0:
        folder.write_config(args=vars(args), provenance=provenance, init=setup.init_info, num_classes=num_classes,
                            transferred=setup.init_info.get("transferred"), **ids)
    writer = engine.tensorboard_writer(folder.path, purge_step=state.step)
    if state.step == 0:
        engine.write_run_text(writer, "finetune", vars(args), provenance, {"init": setup.init_info,
                              "identity": folder.identity, **ids},
                              first=("arch", "init", "fraction", "label_seed", "seed", "encoder"))
    trainer = SegmentationTrainer(model, setup.loss_fn, ds, setup.sampler, args, writer, setup.val_loaded, num_classes,
                                  device, setup.inference.replace(tta=False), setup.watch_loaded)
    settings = engine.loop_settings(args, args.steps, setup.sampler.batches_per_epoch, args.batch_size, args.lr,
                                    args.warmup_fraction, tb_prefix="train/", desc=f"finetune {args.arch}")
    with engine.deterministic_on_cpu(device), writer:
        stopped = engine.fit(folder, state, trainer, device, settings, log, writer)
        if stopped:
            return {"status": "interrupted", "step": state.step, "steps_total": args.steps, "signal": stopped}
        return report(args, folder, setup, cases, class_names, num_classes, device, writer, trainer,
                      {"provenance": provenance, "train_time": state.elapsed(), **ids})


def report(args, folder: engine.RunFolder, setup: Setup, cases: data.Selection, class_names, num_classes: int, device,
           writer, trainer, done: dict) -> dict:
    """Score the test set as the inference description says, then write model.pt, TensorBoard's test summaries
    and metrics.json (last: it marks the run finished)."""
    model, inference = setup.model, setup.inference
    tty = engine.on_terminal()
    t_eval = time.time()
    test_loaded = scans.load_cases(cases.test, norm=inference.normalization, progress=tty)
    save = None
    if args.save_predictions:
        save = lambda i, pred: scans.write_segmentation(scans.read_volume(cases.test[i].image), pred,  # noqa: E731
                                                        folder.path / "predictions")
    per_case, summary = evaluate_cases(model, test_loaded, num_classes, inference, device, on_prediction=save,
                                       report_every=0 if tty else 10, progress=tty)
    eval_time = time.time() - t_eval
    board.write_test(writer, model, test_loaded, summary, inference, device, class_names, args.steps,
                     board.hparams(args, setup.init_info))
    save_model(folder.path, model, arch=args.arch, encoder=setup.init_info["encoder"],
               encoder_kwargs=setup.init_info["encoder_kwargs"], num_classes=num_classes, class_names=class_names,
               inference=inference)
    prov = done["provenance"]
    metrics = {"status": "done", **summary, "class_names": class_names, "num_classes": num_classes,
               "cases": per_case, **{k: done[k] for k in ("train_cases", "val_cases", "test_cases", "watch_cases")},
               "val_dice": trainer.val_dice, "final_train_loss": trainer.final_loss(),
               "arch": args.arch, "encoder": setup.init_info["encoder"], "init": setup.init_info, "fraction": args.fraction,
               "label_seed": args.label_seed, "seed": args.seed, "flip_axes": list(inference.flip_axes),
               "inference": inference.to_dict(), "steps": args.steps, "params": models.count_parameters(model),
               "identity": folder.identity, "args": vars(args), "commit": prov["commit"], "dirty": prov["dirty"],
               "argv": prov["argv"], "machine": prov["machine"], "device": str(device),
               "train_time_s": round(done["train_time"], 2), "eval_time_s": round(eval_time, 2),
               "wall_time_s": round(done["train_time"] + eval_time, 2)}
    folder.write_result(clean(metrics))
    per_class = ", ".join(f"{board.class_name(class_names, k)} {v:.4f}" for k, v in summary["dice_per_class"].items())
    print(f"done: mean test Dice {summary['mean_dice']:.4f} ({per_class}), mean HD95 {summary['mean_hd95']:.2f} mm "
          f"over {len(cases.test)} test cases; {metrics['wall_time_s']:.0f} s -> {folder.path / METRICS}", flush=True)
    return engine.read_json(folder.path / METRICS)


def main(argv=None) -> int:
    return engine.main(run, get_args_parser(), argv)
