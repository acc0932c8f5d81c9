"""finetune: metrics against hand-computed cases, losses against slow references, and tiny end-to-end runs."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
import scans
from atomicio import write_json
from finetune import metrics
from finetune.losses import SegmentationLoss, focal_loss, soft_dice_loss
from finetune.train import build_model, get_args_parser, main, run
from helpers import changed_value, fingerprint, identity_actions, refused_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ metrics

def box(shape=(10, 10, 10), lo=(2, 2, 2), hi=(6, 6, 6)):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_dice_and_hd95_perfect_and_disjoint():
    a = box()
    assert metrics.dice_score(a, a) == 1.0 and metrics.hd95(a, a) == 0.0
    b = box(lo=(2, 2, 7), hi=(6, 6, 9))  # same rows, z 7..8 vs 2..5: no overlap
    assert metrics.dice_score(a, b) == 0.0
    assert metrics.hd95(a, b) > 0
    half = box(hi=(4, 6, 6))  # 32 of a's 64 voxels
    assert metrics.dice_score(half, a) == pytest.approx(2 * 32 / (32 + 64))


def test_empty_set_convention():
    a, empty = box(), np.zeros((10, 10, 10), bool)
    assert metrics.dice_score(empty, empty) == 1.0 and metrics.hd95(empty, empty) == 0.0
    assert metrics.dice_score(empty, a) == 0.0 and math.isnan(metrics.hd95(empty, a))  # empty prediction
    assert metrics.dice_score(a, empty) == 0.0 and math.isnan(metrics.hd95(a, empty))  # empty label


def test_hd95_known_values():
    a, b = np.zeros((8, 4, 4), bool), np.zeros((8, 4, 4), bool)
    a[0, 1, 1], b[3, 1, 1] = True, True  # 3 voxels apart along axis 0, spacing 2 mm there
    assert metrics.hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    # a line of 20 voxels and the same line plus one voxel 10 away: 40 zero distances and one of 10;
    # the 95th percentile (linear, of 41 values) is 0 while the Hausdorff distance is 10
    line = np.zeros((20, 12, 1), bool)
    line[:, 0, 0] = True
    plus = line.copy()
    plus[0, 10, 0] = True
    assert metrics.hd95(line, plus) == pytest.approx(0.0)
    assert metrics.hd95(plus, line) == pytest.approx(0.0)
    # 2-voxel-thick slab shifted by one: every surface voxel is at 0 or 1 mm -> 95th percentile 1
    assert metrics.hd95(box(hi=(4, 6, 6)), box(lo=(3, 2, 2), hi=(5, 6, 6))) == pytest.approx(1.0)


def test_case_metrics_and_summary():
    gt = np.zeros((6, 6, 6), int)
    gt[1:3, 1:3, 1:3], gt[4:6, 4:6, 4:6] = 1, 2
    pred = gt.copy()
    pred[pred == 2] = 0  # class 2 missed entirely
    c = metrics.case_metrics(pred, gt, num_classes=3, spacing=(1, 1, 1))
    assert c["dice"] == {"1": 1.0, "2": 0.0} and c["mean_dice"] == 0.5
    assert c["hd95"]["1"] == 0.0 and math.isnan(c["hd95"]["2"])
    s = metrics.summarize([c, metrics.case_metrics(gt, gt, 3)])
    assert s["mean_dice"] == pytest.approx(0.75)
    assert s["dice_per_class"] == {"1": 1.0, "2": 0.5}
    assert s["mean_hd95"] == 0.0 and s["hd95_undefined"] == 1 and s["num_cases"] == 2


# ------------------------------------------------------------------ losses

def slow_dice_loss(logits, target):
    probs = logits.softmax(1)
    scores = []
    for c in range(1, logits.shape[1]):
        p, t = probs[:, c], (target == c).float()
        scores.append((2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5))
    return 1 - torch.stack(scores).mean()


def test_dice_loss_perfect_and_reference():
    target = torch.randint(0, 3, (2, 8, 9))
    perfect = 50.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(2, 3, 8, 9)
    assert soft_dice_loss(logits, target).item() == pytest.approx(slow_dice_loss(logits, target).item(), rel=1e-5)
    assert soft_dice_loss(-perfect, target).item() > 0.9


def test_focal_loss_reference():
    logits, target = torch.randn(2, 3, 5, 4), torch.randint(0, 3, (2, 5, 4))
    assert focal_loss(logits, target, gamma=0).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    w = torch.tensor([0.2, 1.0, 3.0])
    p = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 3)
    t = target.reshape(-1)
    pt = p[torch.arange(len(t)), t]
    slow = (-w[t] * (1 - pt) ** 2 * pt.log()).mean()
    assert focal_loss(logits, target, 2.0, w).item() == pytest.approx(slow.item(), rel=1e-5)


def test_segmentation_loss_kinds():
    logits, target = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randint(0, 3, (2, 6, 6))
    for kind in ("ce_dice", "focal_dice", "ce"):
        loss, parts = SegmentationLoss(kind, 3, class_weights=[0.5, 1, 1])(logits, target)
        loss.backward()
        assert torch.isfinite(loss) and "pixel" in parts and ("dice" in parts) == (kind != "ce")
    with pytest.raises(ValueError, match="3 values"):
        SegmentationLoss("ce_dice", 3, class_weights=[1, 1])
    with pytest.raises(ValueError, match="loss"):
        SegmentationLoss("dice_only", 3)


# ------------------------------------------------------------------ end to end

@pytest.fixture
def tiny(data_dir, tmp_path):
    """7 embedded cases (symlinks, with dataset.json): 2 test, 5 in the pool; fractions 0.5 and 1.0."""
    root = tmp_path / "msd7"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for f in sorted((data_dir / sub).glob("*.nii.gz"))[:7]:
            (root / sub / f.name).symlink_to(f)
    labels = json.loads((data_dir / "dataset.json").read_text())["labels"]
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    ids = [c.case_id for c in scans.find_cases(root)]
    split = tmp_path / "splits.json"
    write_json(split, scans.make_splits(ids, test_fraction=0.3, seed=0, fractions=(0.5, 1.0), seeds=(0,)))
    return root, split


def argv(data, split, out, *extra):
    return ["--arch", "unet", "--encoder", "unet_tiny", "--init", "random", "--fraction", "1.0", "--seed", "0",
            "--data", str(data), "--split", str(split), "--out", str(out), "--steps", "4", "--batch-size", "8",
            "--device", "cpu", "--log-every", "2", *extra]


def args_of(*a):
    return get_args_parser().parse_args(list(a))


def numbers(m):
    return {k: m[k] for k in ("mean_dice", "dice_per_class", "mean_hd95", "cases")}


def test_end_to_end_cli(tiny, tmp_path):
    data, split = tiny
    out = tmp_path / "run"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    res = subprocess.run([sys.executable, "-m", "finetune", *argv(data, split, out, "--val-cases", "1", "--tta")],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    splits = json.loads(split.read_text())
    assert m["status"] == "done" and m["steps"] == 4 and m["num_classes"] == 3
    assert 0.0 <= m["mean_dice"] <= 1.0 and set(m["dice_per_class"]) == {"1", "2"}
    assert m["mean_dice"] == pytest.approx(np.mean([list(c["dice"].values()) for c in m["cases"]]))
    assert m["test_cases"] == sorted(splits["test"]) and [c["case_id"] for c in m["cases"]] == m["test_cases"]
    assert sorted(m["train_cases"] + m["val_cases"]) == sorted(splits["label_fractions"]["0"]["1.0"])
    assert not set(m["train_cases"]) & set(m["test_cases"])
    for k in ("mean_hd95", "hd95_per_class", "identity", "args", "commit", "seed", "wall_time_s", "machine", "init"):
        assert k in m, k
    assert m["identity"]["arch"] == "unet" and m["seed"] == 0 and m["init"]["init"] == "random"
    assert m["identity"] == json.loads((out / "config.json").read_text())["identity"]
    for f in ("config.json", "log.jsonl", "checkpoint.pt"):
        assert (out / f).is_file(), f
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out)).Reload()
    assert {"train/loss", "train/lr", "val/dice", "test/mean_dice", "hparam/test_mean_dice"} <= set(events.Tags()["scalars"])
    assert "test/image_label_prediction" in events.Tags()["images"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    # the same command again: already done, same numbers, nothing touched
    files = fingerprint(out)
    assert run(args_of(*argv(data, split, out, "--val-cases", "1", "--tta"))) == m
    assert fingerprint(out) == files


def test_every_result_affecting_argument_is_checked_after_a_finished_run(tiny, tmp_path, capsys):
    data, split = tiny
    out = tmp_path / "run"
    base = argv(data, split, out)
    assert main(base) == 0
    other_file = tmp_path / "other.json"
    write_json(other_file, {**json.loads(split.read_text()), "note": "another file"})
    ident = json.loads((out / "config.json").read_text())["identity"]
    actions = identity_actions(get_args_parser(), ident)
    assert {a.dest for a in actions} == {k for k in ident if not k.endswith("_sha256")}
    files = fingerprint(out)
    for action in actions:
        capsys.readouterr()
        rc = main(base + changed_value(action, other_file))
        err = capsys.readouterr().err
        assert rc == 2 and refused_names(err, action), (action.dest, rc, err)
    assert fingerprint(out) == files
    for reporting in (["--workers", "1"], ["--log-every", "1"], ["--ckpt-every", "1"], ["--stop-at-step", "2"]):
        assert main(base + reporting) == 0  # changes no number: still the same finished run
    assert fingerprint(out) == files


def test_determinism_and_resume(tiny, tmp_path):
    data, split = tiny
    ref = run(args_of(*argv(data, split, tmp_path / "a", "--arch", "transunet")))
    again = run(args_of(*argv(data, split, tmp_path / "b", "--arch", "transunet")))
    assert numbers(again) == numbers(ref) and again["final_train_loss"] == ref["final_train_loss"]
    out = tmp_path / "c"
    part = run(args_of(*argv(data, split, out, "--arch", "transunet", "--stop-at-step", "2")))
    assert part == {"status": "interrupted", "step": 2, "steps_total": 4}
    assert not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    resumed = run(args_of(*argv(data, split, out, "--arch", "transunet")))
    assert resumed["steps"] == 4 and torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    assert numbers(resumed) == numbers(ref)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_init_from_encoder_checkpoint(tiny, tmp_path):
    data, split = tiny
    enc = models.create_encoder("unet_tiny")
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_()
    path = models.save_encoder(tmp_path / "encoder.pt", enc, pretext="rotation")
    out = tmp_path / "run"
    m = run(args_of(*argv(data, split, out, "--init", str(path), "--steps", "0", "--freeze-encoder-steps", "1")))
    assert m["init"]["init"] == "checkpoint" and m["init"]["pretext"] == "rotation" and m["encoder"] == "unet_tiny"
    state = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    for k, v in enc.state_dict().items():
        assert torch.equal(state[f"encoder.{k}"], v), k
    for arch in ("unet", "transunet"):
        model, info = build_model(args_of(*argv(data, split, tmp_path / "x", "--arch", arch, "--init", str(path))), 3)
        for k, v in enc.state_dict().items():
            assert torch.equal(model.encoder.state_dict()[k], v), (arch, k)
    assert main(argv(data, split, tmp_path / "y", "--init", str(path), "--encoder", "resnet18")) == 2


def test_imagenet_init_from_local_file(tiny, tmp_path, capsys):
    import timm
    data, split = tiny
    weights = timm.create_model("resnet18").state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    a = args_of(*argv(data, split, tmp_path / "run", "--encoder", "resnet18", "--init", "imagenet",
                      "--imagenet-weights", str(path)))
    model, info = build_model(a, 3)
    assert info == {"init": "imagenet", "encoder": "resnet18", "path": str(path)}
    enc = model.encoder.state_dict()
    assert torch.equal(enc["model.layer3.1.conv2.weight"], weights["layer3.1.conv2.weight"])
    assert torch.allclose(enc["model.conv1.weight"], weights["conv1.weight"].sum(1, keepdim=True))
    assert main(argv(data, split, tmp_path / "run2", "--encoder", "resnet18", "--init", "imagenet")) == 2
    assert "--imagenet-weights" in capsys.readouterr().err


@pytest.mark.parametrize("change, expect", [
    (("--fraction", "0.3"), "fraction 0.3"),
    (("--data", "/nonexistent/data"), "/nonexistent/data"),
    (("--encoder", "no_such_net"), "no_such_net"),
    (("--init", "/nonexistent/encoder.pt"), "/nonexistent/encoder.pt"),
])
def test_bad_input_exits_2(tiny, tmp_path, capsys, change, expect):
    data, split = tiny
    out = tmp_path / "run"
    assert main(argv(data, split, out, *change)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err
    assert not (out / "metrics.json").exists()


# ------------------------------------------------------------------ label-safe augmentation

def _ap_offsets(data_dir, flip_axes):
    """(raw, augmented) head-minus-body centroid offsets (axis-1, axis-0) of augmented training slices."""
    from finetune.data import TrainSlices
    from finetune.train import slice_flip_axes
    from scans.augment import segmentation_augment
    args = get_args_parser().parse_args(["--arch", "unet", "--fraction", "1", "--split", "x", "--out", "x",
                                         "--data", str(data_dir), "--flip-axes", *flip_axes])
    loaded = scans.load_cases(scans.find_cases(data_dir)[:12])
    ds = TrainSlices(loaded, (48, 64), 2, segmentation_augment("default", slice_flip_axes(args)), aug_prob=1.0)
    raw, aug = [], []

    def offset(mask):
        a, b = np.argwhere(mask == 1), np.argwhere(mask == 2)
        if len(a) < 20 or len(b) < 20:
            return None
        d = a.mean(0) - b.mean(0)
        return d[1], d[0]
    for epoch in range(4):
        for pos in range(len(ds)):
            before = offset(ds.slices.stack.labels[ds.table[pos]])
            if before is None or abs(before[0]) < 3 or abs(before[0]) < abs(before[1]):
                continue  # only slices whose head and body are clearly apart along the A-P axis
            after = offset(ds[(epoch, pos)][1].numpy())
            if after is not None:
                raw.append(before[0])
                aug.append(after[0])
    return np.array(raw), np.array(aug)


def test_augmentation_keeps_the_head_anterior_to_the_body(data_dir):
    """Volume axis 1 is anterior-posterior and defines the classes (head: class 1, body: class 2).
    With the dataset's flips (protocol.json: axis 0 only) no augmented sample reverses their order;
    allowing a flip along axis 1 reverses it in half the augmented samples, which this check sees."""
    assert scans.load_protocol(data_dir).flip_axes == (0,)
    raw, aug = _ap_offsets(data_dir, ["auto"])
    assert len(raw) > 200 and (raw > 0).all()  # in the data, the head is always anterior
    assert (np.sign(aug) == np.sign(raw)).all()
    raw, aug = _ap_offsets(data_dir, ["0", "1"])
    reversed_share = (np.sign(aug) != np.sign(raw)).mean()
    assert 0.35 < reversed_share < 0.65  # every sample is augmented here, half of them flipped
