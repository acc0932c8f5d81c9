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
from helpers import changed_value, fingerprint, identity_actions, refused_names, write_dicom_series

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


def test_hd95_in_bounding_box_equals_whole_array():
    """HD95 is computed inside the bounding box of both masks: the same value, to the last bit, as
    the distances over the whole array, also for masks touching the array's border."""
    rng = np.random.default_rng(0)
    for k in range(12):
        shape, spacing = (20, 24, 18), (1.0, 0.7, 2.5)
        blobs = []
        for _ in range(2):
            centre = rng.uniform(0, shape)  # some blobs reach the border
            grid = np.indices(shape).transpose(1, 2, 3, 0)
            blobs.append(((grid - centre) ** 2 / rng.uniform(4, 40, 3)).sum(-1) < 1 + rng.uniform(0, 3, shape))
        a, b = blobs
        if not (a.any() and b.any()):
            continue
        whole = np.concatenate([metrics.surface_distances(a, b, spacing), metrics.surface_distances(b, a, spacing)])
        assert metrics.hd95(a, b, spacing) == float(np.percentile(whole, 95)), k
    a = np.zeros((6, 6, 6), bool)
    a[0:2, 2:4, 5] = True  # touches two faces of the array
    assert metrics.bounding_box(a) == (slice(0, 2), slice(2, 4), slice(5, 6))


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
        assert torch.isfinite(loss) and ("focal_loss" if kind == "focal_dice" else "ce_loss") in parts and ("dice_loss" in parts) == (kind != "ce")
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
    assert set(m["dice_per_class"]) == {"1", "2"}
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
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out)).Reload()
    assert {"train/loss", "train/lr", "val/dice", "test/mean_dice"} <= set(events.Tags()["scalars"])
    assert "test/image_label_prediction" in events.Tags()["images"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert (out / "model.pt").is_file() and m["watch_cases"] == []  # 100%: no pool case outside the fraction
    # the same command again: already done, same numbers, nothing touched
    files = fingerprint(out)
    assert run(args_of(*argv(data, split, out, "--val-cases", "1", "--tta"))) == m
    assert fingerprint(out) == files


def test_tensorboard_steps_names_hparams_text_layout_and_watch_curve(tiny, tmp_path):
    """x-axis in optimisation steps, self-explaining names, hparams without hparam/* scalars, the run's
    command and config in TEXT, a custom-scalars layout, and a watch curve on pool cases outside the fraction."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    data, split = tiny
    out = tmp_path / "run"
    m = run(args_of(*argv(data, split, out, "--fraction", "0.5", "--eval-every", "2", "--max-test-cases", "1")))
    splits = json.loads(split.read_text())
    labelled = set(splits["label_fractions"]["0"]["0.5"])
    assert m["watch_cases"] and not set(m["watch_cases"]) & (labelled | set(splits["test"]))
    assert set(m["watch_cases"]) <= set(splits["train_pool"])
    ev = EventAccumulator(str(out), size_guidance={"tensors": 0}).Reload()
    scalars = set(ev.Tags()["scalars"])
    assert {"train/loss", "train/dice_loss", "train/ce_loss", "train/images_seen", "watch/dice", "test/mean_dice",
            "test/dice_Anterior", "test/dice_Posterior"} <= scalars
    assert not [t for t in scalars if t.startswith("hparam")] and "train/dice" not in scalars
    assert [e.step for e in ev.Scalars("train/loss")] == [2, 4]  # steps, not images
    assert [e.value for e in ev.Scalars("train/images_seen")] == [16, 32]
    assert [e.step for e in ev.Scalars("watch/dice")] == [2, 4]
    assert {"run/command", "run/config", "run/commit"} <= set(ev.Tags()["tensors"])
    command = ev.Tensors("run/command")[0].tensor_proto.string_val[0].decode()
    assert command.lstrip().startswith("python -m finetune --arch unet --init random --fraction 0.5 --label-seed 0")
    assert "test/mean_hd95_mm" in scalars and "watch/hd95_mm" in scalars  # a unit in the name
    content = ev.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["init"].string_value == "random" and info.hparams["label_fraction"].string_value == "50%"
    assert {"arch", "encoder", "label_seed", "seed", "steps", "lr"} <= set(info.hparams)
    from pretrain.train import task_hparams
    shared = set(task_hparams(pretrain_args_for_board(tmp_path), 3))
    # the columns both kinds of run fill come first in name order; each kind's own ones are prefixed after them
    assert {k for k in info.hparams if "." not in k} == {k for k in shared if "." not in k}
    assert max(k for k in shared | set(info.hparams) if "." not in k) < min(k for k in shared | set(info.hparams) if "." in k)
    assert "_hparams_/experiment" not in ev.PluginTagToContent("hparams")  # TensorBoard unites every run's columns
    assert "custom_scalars__config__" in ev.Tags()["tensors"]
    panel = ev.Images("test/image_label_prediction")[0]
    assert panel.width == 3 * 2 * 64 and panel.height == 2 * 48 + 2 * 26  # one row: title band, tiles, legend


def pretrain_args_for_board(tmp_path):
    import pretrain
    return pretrain.get_args_parser().parse_args(["--task", "rotation", "--split", "s", "--out", str(tmp_path / "p")])


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
    assert part == {"status": "interrupted", "step": 2, "steps_total": 4, "signal": "stop-at-step"}
    assert not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    resumed = run(args_of(*argv(data, split, out, "--arch", "transunet")))
    assert resumed["steps"] == 4 and torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
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
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    for k, v in enc.state_dict().items():
        assert torch.equal(state[f"encoder.{k}"], v), k
    for arch in ("unet", "transunet"):
        model, info = build_model(args_of(*argv(data, split, tmp_path / "x", "--arch", arch, "--init", str(path))), 3)
        for k, v in enc.state_dict().items():
            assert torch.equal(model.encoder.state_dict()[k], v), (arch, k)
    assert main(argv(data, split, tmp_path / "y", "--init", str(path), "--encoder", "resnet18")) == 2


def test_a_note_when_the_encoder_saw_other_intensities(tiny, tmp_path, capsys):
    data, split = tiny
    path = models.save_encoder(tmp_path / "encoder.pt", models.create_encoder("unet_tiny"), pretext="simclr",
                               config={"norm": "percentile", "window": None})
    build_model(args_of(*argv(data, split, tmp_path / "a", "--init", str(path))), 3)
    assert "note:" not in capsys.readouterr().out
    build_model(args_of(*argv(data, split, tmp_path / "b", "--init", str(path), "--norm", "ct", "--window", "40", "400")), 3)
    assert ("note: the encoder was pretrained with --norm percentile, this run normalises with --norm ct --window 40 400"
            in capsys.readouterr().out)


def test_imagenet_init_from_local_file(tiny, tmp_path, capsys):
    import timm
    data, split = tiny
    weights = timm.create_model("resnet18").state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    a = args_of(*argv(data, split, tmp_path / "run", "--encoder", "resnet18", "--init", "imagenet",
                      "--imagenet-weights", str(path)))
    model, info = build_model(a, 3)
    assert info == {"init": "imagenet", "encoder": "resnet18", "encoder_kwargs": {}, "path": str(path)}
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
    (("--norm", "ct"), "--window LEVEL WIDTH"),
    (("--window", "40", "400"), "--norm ct only"),
    (("--spacing", "0", "1"), "--spacing must be > 0"),
])
def test_bad_input_exits_2(tiny, tmp_path, capsys, change, expect):
    data, split = tiny
    out = tmp_path / "run"
    assert main(argv(data, split, out, *change)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err
    assert not (out / "metrics.json").exists()


def test_init_with_a_training_checkpoint_says_use_encoder_pt(tiny, tmp_path, capsys):
    data, split = tiny
    assert main(argv(data, split, tmp_path / "run", "--steps", "0", "--max-test-cases", "1")) == 0
    (tmp_path / "pre").mkdir()
    torch.save({"model": {}, "rng": {"numpy": np.random.get_state()}}, tmp_path / "pre" / "checkpoint.pt")
    models.save_encoder(tmp_path / "pre" / "encoder.pt", models.create_encoder("unet_tiny"))
    capsys.readouterr()
    for ckpt, hint in ((tmp_path / "run" / "checkpoint.pt", "pass the encoder.pt"),
                       (tmp_path / "pre" / "checkpoint.pt", f"use {tmp_path / 'pre' / 'encoder.pt'}")):
        out = tmp_path / "bad"
        assert main(argv(data, split, out, "--init", str(ckpt))) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not an encoder checkpoint" in err and hint in err, err
        assert not out.exists()


# ------------------------------------------------------------------ predict and export

def _dice(pred, label, k):
    g, q = label == k, pred == k
    return 1.0 if g.sum() + q.sum() == 0 else 2 * (g & q).sum() / (g.sum() + q.sum())


def test_predict_writes_what_evaluation_scored_in_the_scans_geometry(tiny, tmp_path, capsys):
    import nibabel as nib
    from PIL import Image

    from finetune import predict
    data, split = tiny
    out = tmp_path / "run"
    m = run(args_of(*argv(data, split, out, "--steps", "6", "--save-predictions")))
    case = m["test_cases"][0]
    image = next((data / "imagesTr").glob(f"{case}*.nii.gz"))
    assert predict.main(["--run", str(out), "--input", str(image), "--out", str(tmp_path / "p"), "--probabilities"]) == 0
    src, pred = nib.load(image), nib.load(tmp_path / "p" / f"{case}.nii.gz")
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine) and pred.get_data_dtype() == np.uint8
    labels = np.asarray(pred.dataobj)
    assert np.array_equal(labels, np.asarray(nib.load(out / "predictions" / f"{case}.nii.gz").dataobj))
    truth = np.asarray(nib.load(data / "labelsTr" / f"{case}.nii.gz").dataobj)
    scored = next(c for c in m["cases"] if c["case_id"] == case)["dice"]
    for k, d in scored.items():
        assert _dice(labels, truth, int(k)) == pytest.approx(d, abs=1e-9)
    probs = nib.load(tmp_path / "p" / f"{case}_probabilities.nii.gz")
    assert probs.shape == (*src.shape, 3) and np.array_equal(np.asarray(probs.dataobj).argmax(-1), labels)
    # a folder of NIfTI files, a PNG slice and a DICOM series
    assert predict.main(["--run", str(out), "--input", str(data / "imagesTr"), "--out", str(tmp_path / "all")]) == 0
    assert sorted(f.name for f in (tmp_path / "all").iterdir() if f.name not in (".lock", "predict.json")) == \
        sorted(f"{c.case_id}.nii.gz" for c in scans.find_cases(data))
    made = json.loads((tmp_path / "all" / "predict.json").read_text())  # which model made them, and how
    assert made["run"] == str(out.resolve()) and made["tta"] is False and made["amp"] is False
    vol = np.asarray(src.dataobj)
    Image.fromarray(vol[:, :, vol.shape[2] // 2].astype(np.uint16)).save(tmp_path / "slice.png")
    assert predict.main(["--run", str(out), "--input", str(tmp_path / "slice.png"), "--out", str(tmp_path / "png")]) == 0
    assert np.array(Image.open(tmp_path / "png" / "slice.png")).shape == vol.shape[:2]
    write_dicom_series(tmp_path / "series", vol[:, :, :6].astype(np.uint16))
    assert predict.main(["--run", str(out), "--input", str(tmp_path / "series"), "--out", str(tmp_path / "dcm")]) == 0
    d = nib.load(tmp_path / "dcm" / "series.nii.gz")
    assert d.shape == (*vol.shape[:2], 6) and np.allclose(np.linalg.norm(d.affine[:3, :3], axis=0), [0.5, 0.7, 3.0])
    # bad input: one line naming it, nothing written
    capsys.readouterr()
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    assert predict.main(["--run", str(out), "--input", str(tmp_path / "broken.nii.gz"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.nii.gz" in err and not (tmp_path / "b").exists()
    assert predict.main(["--run", str(tmp_path), "--input", str(image), "--out", str(tmp_path / "b")]) == 2
    assert "model.pt" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["unet", "transunet"])
def test_onnx_export_matches_pytorch(tiny, tmp_path, arch, capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from finetune import export
    from finetune.modelfile import load_model
    data, split = tiny
    out = tmp_path / "run"
    run(args_of(*argv(data, split, out, "--arch", arch, "--steps", "2", "--max-test-cases", "1")))
    assert export.main(["--run", str(out), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "max |difference|" in capsys.readouterr().out
    model, _ = load_model(out)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((3, 1, 48, 64), (1, 1, 80, 57)):  # dynamic batch, height and width
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {"image": x})[0]
        assert got.shape == want.shape == (shape[0], 3, *shape[2:])
        assert np.abs(got - want).max() < 1e-4


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
            before = offset(ds.labels[ds.table[pos]])
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


# ------------------------------------------------------------------ any image size: patches, tiles, spacing

def test_large_slices_give_patches_a_third_on_foreground_covering_the_slice():
    from finetune.data import TrainSlices
    yy, xx = np.mgrid[:128, :160]
    img = np.repeat((yy * 1000 + xx).astype(np.float32)[..., None], 2, -1)  # a pixel's value says where it is
    lab = np.zeros((128, 160, 2), np.int64)
    lab[100:110, 20:30] = 1
    ds = TrainSlices([scans.LoadedCase("big", img, lab, (1.0, 1.0, 1.0))], (48, 64), 2, None, seed=0)
    assert ds.num_larger == 2 and len(ds) == 2
    covered = np.zeros((128, 160), bool)
    on_fg = 0
    draws = 300
    for epoch in range(draws):
        x, m = ds[(epoch, 0)]
        assert x.shape == (1, 48, 64) and m.shape == (48, 64)
        top, left = divmod(int(x[0, 0, 0]), 1000)
        assert np.array_equal(m.numpy(), lab[top : top + 48, left : left + 64, 0])
        covered[top : top + 48, left : left + 64] = True
        on_fg += int(m.any())
    assert covered.all()  # patches cover the whole slice
    # a third forced onto foreground, plus the random patches that happen to hit it (about 0.2 here)
    assert 0.4 < on_fg / draws < 0.6
    small = TrainSlices([scans.LoadedCase("small", img[:40, :50], lab[:40, :50], (1.0, 1.0, 1.0))], (48, 64), 2, None)
    assert small.num_larger == 0 and small[(0, 0)][0].shape == (1, 48, 64)  # padded whole, as before


def test_tiled_prediction_equals_whole_slices_for_a_pointwise_network():
    from finetune.inference import Inference, predict_tiled
    net = torch.nn.Conv2d(1, 3, 1).eval()
    x = torch.randn(2, 1, 100, 130)
    with torch.no_grad():
        assert torch.allclose(predict_tiled(net, x, max_pixels=32 * 32), net(x), atol=1e-6)
    vol = np.random.default_rng(0).random((100, 130, 3)).astype(np.float32)
    np.testing.assert_allclose(Inference(max_pixels=32 * 32).volume(net, vol, "cpu"), Inference().volume(net, vol, "cpu"),
                               atol=1e-6)


def test_prediction_at_a_target_spacing_comes_back_on_the_scans_grid():
    from finetune.inference import Inference
    net = torch.nn.Conv2d(1, 3, 1).eval()
    vol = np.random.default_rng(0).random((40, 52, 3)).astype(np.float32)
    at = Inference(spacing=(1.0, 1.0))
    same = at.probabilities(net, vol, (1.0, 1.0, 2.0), "cpu")
    np.testing.assert_allclose(same, Inference().probabilities(net, vol, (1.0, 1.0, 2.0), "cpu"), atol=0)
    fine = at.probabilities(net, vol, (0.25, 0.25, 2.0), "cpu")  # predicted on a 10 x 13 grid
    assert fine.shape == (3, 40, 52, 3) and np.allclose(fine.sum(0), 1, atol=1e-5)
    assert Inference.from_dict(at.replace(tta=True).to_dict()) == at.replace(tta=True)  # model.pt's record round-trips


@pytest.mark.parametrize("axis", [0, 2])
def test_training_volumes_resample_in_plane_only_and_labels_stay_classes(axis):
    from finetune.data import resample_case
    spacing = [0.5, 0.5, 0.5]
    spacing[axis] = 2.0
    image = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)
    label = np.zeros((40, 40, 40), np.uint8)
    label[10:30, 10:30, 10:30] = 2
    c = resample_case(scans.LoadedCase("case_1", image, label, tuple(spacing)), axis, (1.0, 1.0))
    want = [20, 20, 20]
    want[axis] = 40
    assert c.image.shape == c.label.shape == tuple(want) and c.image.dtype == np.float32
    assert c.spacing == tuple(2.0 if a == axis else 1.0 for a in range(3))
    assert set(np.unique(c.label)) == {0, 2}


def test_validation_and_watch_cases_keep_subjects_apart(data_dir, tmp_path):
    from finetune.data import select
    ids = [c.case_id for c in scans.find_cases(data_dir)]
    groups = scans.load_protocol(data_dir).subjects
    split = tmp_path / "split.json"
    write_json(split, scans.make_splits(ids, 0.2, 0, (0.01, 0.1, 1.0), (0, 1, 2), groups=groups))
    for seed in (0, 1, 2):
        full = select(data_dir, split, 1.0, seed, val_cases=5, watch_cases=3)
        assert len(full.val) >= 5 and full.train
        train, val = ({groups[c.case_id] for c in cases} for cases in (full.train, full.val))
        assert not train & val  # whole subjects held out for validation
        mid = select(data_dir, split, 0.1, seed, watch_cases=20)
        labelled = {groups[c.case_id] for c in mid.train}
        assert len(mid.watch) == 20 and not {groups[c.case_id] for c in mid.watch} & labelled


# ------------------------------------------------------------------ files nobody should trust

def test_predict_and_export_write_over_nothing(tiny, tmp_path, capsys):
    """Refused in one line (exit 2), leaving every file as it was: predict into the input's folder, into a
    dataset's labelsTr, into the run folder, inputs whose outputs share a name, a second model's predictions
    into one --out; export onto the run's model.pt or into a place that cannot be written."""
    from finetune import export, predict
    data, split = tiny
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    for out, seed in ((run_a, "0"), (run_b, "1")):
        assert main(argv(data, split, out, "--steps", "2", "--max-test-cases", "1", "--seed", seed)) == 0
    image = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
    scans_dir = tmp_path / "scans"
    scans_dir.mkdir()
    (scans_dir / "case.nii.gz").write_bytes(image.read_bytes())
    before = fingerprint(tmp_path)

    def refused(*args, says):
        capsys.readouterr()
        assert predict.main(list(args)) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err

    refused("--run", str(run_a), "--input", str(scans_dir), "--out", str(scans_dir), says="inside the input folder")
    refused("--run", str(run_a), "--input", str(scans_dir / "case.nii.gz"), "--out", str(scans_dir), says="holds the input")
    refused("--run", str(run_a), "--input", str(image), "--out", str(data / "labelsTr"), says="dataset folder")
    refused("--run", str(run_a), "--input", str(image), "--out", str(run_a / "preds"), says="inside the run folder")
    (scans_dir / "case.nii").write_bytes(__import__("gzip").decompress(image.read_bytes()))
    refused("--run", str(run_a), "--input", str(scans_dir), "--out", str(tmp_path / "p1"), says="same output name")
    assert not (tmp_path / "p1").exists()
    (scans_dir / "case.nii").unlink()
    assert fingerprint(tmp_path) == before
    assert predict.main(["--run", str(run_a), "--input", str(image), "--out", str(tmp_path / "p")]) == 0
    assert predict.main(["--run", str(run_a), "--input", str(image), "--out", str(tmp_path / "p")]) == 0  # same model: fine
    written = {k: v for k, v in fingerprint(tmp_path / "p").items() if k != ".lock"}
    refused("--run", str(run_b), "--input", str(image), "--out", str(tmp_path / "p"), says="another model")
    refused("--run", str(run_a), "--input", str(image), "--out", str(tmp_path / "p"), "--amp", says="other options")
    assert {k: v for k, v in fingerprint(tmp_path / "p").items() if k != ".lock"} == written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    refused("--run", str(run_a), "--input", str(image), "--out", str(tmp_path / "mine"), says="not empty")
    import nibabel as nib
    vol = nib.load(image)
    arr = np.asarray(vol.dataobj).astype(np.float32)
    np.put(arr, np.arange(0, arr.size, 50), np.nan)  # 2% of the voxels (np.put: the array is Fortran-ordered)
    header = vol.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(arr, vol.affine, header), tmp_path / "nan.nii.gz")
    capsys.readouterr()
    assert predict.main(["--run", str(run_a), "--input", str(tmp_path / "nan.nii.gz"), "--out", str(tmp_path / "n")]) == 0
    assert f"{(arr.size + 49) // 50} voxels (2.0%) are not finite" in capsys.readouterr().err
    model = (run_a / "model.pt").read_bytes()
    for out, says in ((run_a / "model.pt", "must end in .onnx"), ("/proc/ssl-medseg-test/m.onnx", "/proc")):
        capsys.readouterr()
        assert export.main(["--run", str(run_a), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    assert (run_a / "model.pt").read_bytes() == model


def test_labels_outside_the_classes_are_refused_before_anything_starts(tiny, tmp_path, capsys):
    import nibabel as nib
    data, split = tiny
    bad = sorted((data / "labelsTr").glob("*.nii.gz"))[0]
    img = nib.load(bad)
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 7
    bad.unlink()  # a symlink into the embedded data: replace it by a changed copy
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), bad)
    out = tmp_path / "run"
    assert main(argv(data, split, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad.name in err and "[7]" in err, err
    assert not out.exists()


@pytest.mark.parametrize("change, expect", [
    (("--device", "cuda:99"), "cuda:99"),
    (("--lr", "inf"), "--lr must be a finite number > 0"),
    (("--batch-size", "0"), "--batch-size must be >= 1"),
    (("--class-weights", "1", "nan", "1"), "--class-weights"),
])
def test_options_that_cannot_run_leave_no_folder(tiny, tmp_path, capsys, change, expect):
    data, split = tiny
    out = tmp_path / "run"
    assert main(argv(data, split, out, *change)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    assert main(argv(data, split, tmp_path / "file")) == 2
    assert "is a file" in capsys.readouterr().err


def test_predict_repeats_the_evaluation_tta_included(tiny, tmp_path):
    """A run evaluated with --tta records it in model.pt: predict without flags scores what the evaluation scored;
    --no-tta turns it off."""
    import nibabel as nib

    from finetune import predict
    data, split = tiny
    out = tmp_path / "run"
    m = run(args_of(*argv(data, split, out, "--steps", "6", "--tta", "--flip-axes", "0", "--max-test-cases", "1")))
    case = m["test_cases"][0]
    image = next((data / "imagesTr").glob(f"{case}*.nii.gz"))
    truth = np.asarray(nib.load(data / "labelsTr" / f"{case}.nii.gz").dataobj)
    assert predict.main(["--run", str(out), "--input", str(image), "--out", str(tmp_path / "p")]) == 0
    labels = np.asarray(nib.load(tmp_path / "p" / f"{case}.nii.gz").dataobj)
    for k, d in m["cases"][0]["dice"].items():
        assert _dice(labels, truth, int(k)) == pytest.approx(d, abs=1e-9)
    assert json.loads((tmp_path / "p" / "predict.json").read_text())["tta"] is True
    assert predict.main(["--run", str(out), "--input", str(image), "--out", str(tmp_path / "q"), "--no-tta"]) == 0
    assert json.loads((tmp_path / "q" / "predict.json").read_text())["tta"] is False


def test_a_network_file_moves_every_tensor_but_the_output_layer_exactly(tiny, tmp_path, capsys):
    """network.pt of a U-Net restore pretraining -> fine-tuning a U-Net: every tensor but the output layer is the
    file's, bit for bit, and config.json lists them; a U-Net file into a TransUNet is refused, nothing created."""
    data, split = tiny
    seg = models.create_segmenter("unet", "unet_tiny", 1)
    with torch.no_grad():
        for p in seg.parameters():
            p.normal_()
    path = models.save_network(tmp_path / "network.pt", seg, {}, pretext="restore")
    out = tmp_path / "run"
    m = run(args_of(*argv(data, split, out, "--init", str(path), "--steps", "0")))
    cfg = json.loads((out / "config.json").read_text())
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert sorted(cfg["transferred"]) == sorted(saved) and len(saved) == len(state) - 2  # all but head.weight, head.bias
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert state["head.weight"].shape[0] == 3 and m["init"]["init"] == "network" and m["init"]["pretext"] == "restore"
    capsys.readouterr()
    assert main(argv(data, split, tmp_path / "bad", "--arch", "transunet", "--init", str(path))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a unet network; --arch is transunet" in err and not (tmp_path / "bad").exists()


def test_encoder_lr_scale_slows_the_encoder_only(tiny, tmp_path):
    """--encoder-lr-scale 0 keeps the encoder where it started while the decoder moves."""
    data, split = tiny
    ref = run(args_of(*argv(data, split, tmp_path / "a", "--steps", "0")))
    assert ref["status"] == "done"
    start = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    run(args_of(*argv(data, split, tmp_path / "b", "--steps", "3", "--encoder-lr-scale", "0")))
    end = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    enc = [k for k in start if k.startswith("encoder.") and k.endswith("weight") and "bn" not in k]
    dec = [k for k in start if k.startswith("decoder.") and k.endswith("weight")]
    assert enc and all(torch.equal(start[k], end[k]) for k in enc if start[k].ndim > 1)
    assert any(not torch.equal(start[k], end[k]) for k in dec)
