"""Pretext tasks: views, losses against a reference, end-to-end runs, resume, DDP negatives."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
import pretrain
import scans
from atomicio import write_json
from helpers import changed_value, fingerprint, identity_actions, reference_ntxent, refused_names, torchrun
from pretrain.tasks import jigsaw, rotation, simclr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def split_file(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("split") / "splits.json"
    ids = [c.case_id for c in scans.find_cases(data_dir)]
    write_json(path, scans.make_splits(ids, 0.2, 0, (0.1, 1.0), (0,)))
    return path


def pretrain_args(task, out, split, *extra):
    return pretrain.get_args_parser().parse_args(
        ["--task", task, "--split", str(split), "--out", str(out), "--steps", "3", "--batch-size", "8",
         "--max-cases", "3", "--log-every", "1", "--num-permutations", "10", *extra])


# ---------------------------------------------------------------- views

def _slice_with_padding():
    img = np.zeros((48, 64), np.float32)
    img[6:42, 6:58] = np.random.default_rng(0).random((36, 52))
    return img, np.array([6, 6, 36, 52])


def test_rotation_views_come_from_inside_the_content():
    img, box = _slice_with_padding()
    for i in range(20):
        v = rotation.RotationViews(crop=32)(img, box, scans.sample_rng(0, 0, i))
        assert v.shape == (1, 32, 32) and (v > 0).float().mean() > 0.97  # no padding zeros


def test_rotation_model_targets_match_rotations():
    x = torch.randn(3, 1, 8, 8)
    rotated, target = rotation.RotationModel.rotate_all(x)
    assert rotated.shape == (12, 1, 8, 8) and target.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert torch.equal(rotated[4], torch.rot90(x[1], 1, dims=(1, 2)))


def test_jigsaw_views_are_normalised_permuted_tiles():
    perms = models.jigsaw_permutations(10)
    img, box = _slice_with_padding()
    tiles, label = jigsaw.JigsawViews(perms, tile=32)(img, box, scans.sample_rng(0, 0, 0))
    assert tiles.shape == (9, 1, 32, 32) and 0 <= label < 10
    assert torch.allclose(tiles.mean(dim=(1, 2, 3)), torch.zeros(9), atol=1e-4)
    assert torch.allclose(tiles.std(dim=(1, 2, 3), unbiased=False), torch.ones(9), atol=1e-2)


def _simclr_batch(img, box, n=8, view_size=(40, 56)):
    """A collated batch of ``n`` samples of one slice, each with its own draws (samples 0..n-1 of epoch 0)."""
    samples = [simclr.SimCLRSample(view_size)(img, box, scans.sample_rng(0, 0, i)) for i in range(n)]
    return tuple(torch.stack(t) for t in zip(*samples))


def test_simclr_views_differ_stay_inside_content_and_keep_float_precision():
    img, box = _slice_with_padding()
    x, b, u, noise = _simclr_batch(img, box)
    assert u.shape == (8, 2, simclr.DRAWS) and noise.shape == (8, 2, 1, 40, 56)
    cfg = simclr.ViewConfig(size=(40, 56), p_color=0, p_gamma=0, p_noise=0, p_blur=0)
    a, c = (simclr.make_views(x, b, cfg, u[:, k], noise[:, k]) for k in (0, 1))
    assert a.shape == c.shape == (8, 1, 40, 56) and a.dtype == torch.float32
    assert not torch.equal(a, c)
    assert (a > 0).float().mean() > 0.99  # sampled inside the content box, never the zero padding
    assert len(torch.unique(a)) > 256  # not quantised to 8 bits
    full = simclr.make_views(x, b, simclr.ViewConfig(size=(40, 56)), u[:, 0], noise[:, 0])
    assert torch.isfinite(full).all()
    again = _simclr_batch(img, box)  # a sample's draws depend on (seed, epoch, index) only
    assert all(torch.equal(p, q) for p, q in zip(again, (x, b, u, noise)))


def _view_directions(flips, axis_of_ramp):
    """Sign of the intensity ramp along ``axis_of_ramp`` (0 rows, 1 columns) in 64 SimCLR views of one slice."""
    h, w = 40, 56
    ramp = torch.linspace(0.1, 1, (h, w)[axis_of_ramp])
    x = (ramp[:, None].expand(h, w) if axis_of_ramp == 0 else ramp[None, :].expand(h, w))[None, None].repeat(64, 1, 1, 1)
    boxes = torch.tensor([[0.0, 0.0, h, w]]).repeat(64, 1)
    cfg = simclr.ViewConfig(size=(h, w), min_scale=1.0, ratio=(w / h, w / h), max_rotation=0.0, flips=flips,
                            p_color=0, p_gamma=0, p_noise=0, p_blur=0)
    u = torch.rand(64, simclr.DRAWS, generator=torch.Generator().manual_seed(0))
    v = simclr.make_views(x, boxes, cfg, u, torch.zeros(64, 1, h, w))[:, 0]
    step = (v[:, -1, :] - v[:, 0, :]).mean(1) if axis_of_ramp == 0 else (v[:, :, -1] - v[:, :, 0]).mean(1)
    return torch.sign(step)


def test_simclr_views_flip_only_the_allowed_slice_axes():
    assert (_view_directions((0,), axis_of_ramp=1) > 0).all()   # columns never reversed
    assert (_view_directions((0,), axis_of_ramp=0) < 0).any()   # rows are
    assert (_view_directions((1,), axis_of_ramp=0) > 0).all()
    assert (_view_directions((), axis_of_ramp=1) > 0).all() and (_view_directions((), axis_of_ramp=0) > 0).all()
    both = _view_directions((0, 1), axis_of_ramp=1)
    assert (both < 0).any() and (both > 0).any()


def test_simclr_takes_its_flips_from_the_dataset_protocol(split_file, data_dir, tmp_path):
    args = pretrain.get_args_parser().parse_args(["--task", "simclr", "--split", str(split_file), "--data",
                                                  str(data_dir), "--out", str(tmp_path / "run")])
    assert scans.load_protocol(args.data).flip_axes == (0,)  # embedded data: axis 1 is anterior-posterior
    assert simclr.SimCLR(args, models.create_encoder("unet_tiny")).model.views.flips == (0,)  # slices along axis 2: rows
    args.axis = 0
    assert simclr.SimCLR(args, models.create_encoder("unet_tiny")).model.views.flips == ()
    args.flip_axes = ["none"]
    assert pretrain.train.run_identity(args)["flip_axes"] == []


def test_gaussian_blur_matches_single_sample_blur():
    x = torch.rand(3, 1, 20, 20)
    sig = torch.tensor([0.5, 1.0, 1.5])
    out = simclr.gaussian_blur(x, sig)
    one = simclr.gaussian_blur(x[1:2], sig[1:2].expand(1))
    assert out.shape == x.shape and out[1].std() < x[1].std()
    assert torch.allclose(out[1], one[0], atol=1e-2)  # kernel radius differs, values agree closely


# ---------------------------------------------------------------- losses



def test_ntxent_matches_reference():
    torch.manual_seed(0)
    z0, z1 = torch.randn(6, 16), torch.randn(6, 16)
    from lightly.loss import NTXentLoss
    assert torch.allclose(NTXentLoss(temperature=0.3)(z0, z1), reference_ntxent(z0, z1, 0.3), atol=1e-5)


def test_positive_accuracy():
    z = torch.eye(4)
    assert simclr.positive_accuracy(z, z + 0.01).item() == 1.0
    assert simclr.positive_accuracy(z, torch.roll(z, 1, 0)).item() == 0.0


# ---------------------------------------------------------------- registry

def test_registry_drives_cli_config_and_docs(tmp_path):
    assert set(pretrain.TASKS) == {"rotation", "jigsaw", "simclr", "restore"}
    parser = pretrain.get_args_parser()
    choices = next(a for a in parser._actions if a.dest == "task").choices
    assert sorted(choices) == sorted(pretrain.TASKS)
    for name, cls in pretrain.TASKS.items():
        assert cls.paper and cls.summary and name in parser.epilog
        assert set(pretrain.task_options(name)) <= {a.dest for a in parser._actions}
    assert pretrain.task_options("simclr") == ["temperature", "proj_dim", "view_size", "min_scale", "flip_axes"]
    with pytest.raises(ValueError, match="two pretext tasks are called 'rotation'"):
        pretrain.TASKS.register(type("Other", (pretrain.PretextTask,), {"name": "rotation", "summary": "x"}))
    with pytest.raises(ValueError, match="needs to be a PretextTask with a name and a summary"):
        pretrain.TASKS.register(type("Nameless", (pretrain.PretextTask,), {}))


def test_a_registered_task_is_offered_everywhere():
    @pretrain.TASKS.register
    class Blank(pretrain.PretextTask):
        name, paper, summary = "blank", "test", "predict nothing"

        @staticmethod
        def add_args(g):
            g.add_argument("--blank-level", type=int, default=3)
    try:
        args = pretrain.get_args_parser().parse_args(["--task", "blank", "--split", "s", "--out", "o", "--blank-level", "4"])
        assert args.blank_level == 4 and "blank" in pretrain.get_args_parser().epilog
        ident = pretrain.run_identity(args)
        assert ident["blank_level"] == 4 and "temperature" not in ident and "crop" not in ident
    finally:
        del pretrain.TASKS["blank"]


# ---------------------------------------------------------------- end to end

@pytest.mark.parametrize("task", ["rotation", "jigsaw", "simclr", "restore"])
def test_each_task_end_to_end(task, tmp_path, split_file, capsys):
    out = tmp_path / task
    res = pretrain.run(pretrain_args(task, out, split_file))
    assert res["status"] == "done" and res["step"] == 3
    assert any(f.name.startswith("events.out.tfevents") for f in out.iterdir())
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    cfg = json.loads((out / "config.json").read_text())
    test_ids = set(json.loads(split_file.read_text())["test"])
    assert cfg["cases"] and not set(cfg["cases"]) & test_ids
    assert cfg["identity"]["task"] == task and cfg["args"]["task"] == task
    meta = models.load_checkpoint_meta(out / "encoder.pt")
    assert meta["meta"]["pretext"] == task and meta["meta"]["steps"] == 3
    for arch in ("unet", "transunet"):
        seg = models.create_segmenter(arch, "unet_tiny", num_classes=3)
        models.load_encoder(seg, out / "encoder.pt")
    assert (out / "network.pt").is_file() == (task == "restore")  # a whole segmenter learned the task
    # TensorBoard: steps on the x-axis, the same tags for every task, k-NN probe, hparams, text, projector
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    ev = EventAccumulator(str(out), size_guidance={"tensors": 0}).Reload()
    assert {"pretrain/loss", "pretrain/accuracy", "pretrain/images_seen"} <= set(ev.Tags()["scalars"])
    assert [e.step for e in ev.Scalars("pretrain/loss")] == [1, 2, 3]
    if res["knn_accuracy"] is not None:
        assert [e.step for e in ev.Scalars("encoder/knn_accuracy")] == [0, 3]
        assert (out / "projector_config.pbtxt").is_file()
    last = ev.Scalars("pretrain/accuracy_last_epoch")  # the table's pretext score, beside the task's chance level
    assert len(last) == 1 and last[0].value == pytest.approx(res["final_accuracy"])
    assert [e.value for e in ev.Scalars("pretrain/chance")] == pytest.approx([res["chance"]] * 2)  # at 0 and the end
    info = plugin_data_pb2.HParamsPluginData.FromString(
        ev.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["init"].string_value == task and info.hparams["kind"].string_value == "pretraining"
    assert info.hparams["steps"].number_value == 3  # the run's real steps
    assert {f"task.{o}" for o in pretrain.task_options(task)} <= set(info.hparams)  # its own options, as columns
    # no experiment definition: TensorBoard makes the table from every run's settings (the first
    # definition found would otherwise hide the columns of every other kind of run)
    assert "_hparams_/experiment" not in ev.PluginTagToContent("hparams")
    assert {"run/command", "run/config"} <= set(ev.Tags()["tensors"])
    command = ev.Tensors("run/command")[0].tensor_proto.string_val[0].decode()
    assert command.lstrip().startswith(f"python -m pretrain --task {task} --encoder unet_tiny")  # what tells runs apart
    files = fingerprint(out)
    capsys.readouterr()
    again = pretrain.run(pretrain_args(task, out, split_file))  # finished run: nothing more to do
    assert again == json.loads((out / "summary.json").read_text())
    assert "already holds this finished" in capsys.readouterr().out
    assert fingerprint(out) == files  # not a byte or a timestamp changed


@pytest.fixture(scope="module")
def finished_simclr(tmp_path_factory, split_file):
    out = tmp_path_factory.mktemp("finished") / "simclr"
    assert pretrain.run(pretrain_args("simclr", out, split_file)).get("status") == "done"
    return out


def test_every_result_affecting_argument_is_checked_after_a_finished_run(finished_simclr, split_file, tmp_path,
                                                                         capsys):
    splits = json.loads(split_file.read_text())
    other_split = tmp_path / "other_split.json"  # another training pool
    write_json(other_split, {**splits, "train_pool": splits["train_pool"][1:]})
    same_pool = tmp_path / "same_pool.json"  # other label fractions, the same pool: the same pretraining
    write_json(same_pool, {**splits, "label_fractions": {"7": splits["label_fractions"]["0"]}})
    base = ["--task", "simclr", "--split", str(split_file), "--out", str(finished_simclr), "--steps", "3",
            "--batch-size", "8", "--max-cases", "3", "--log-every", "1", "--num-permutations", "10"]
    parser = pretrain.get_args_parser()
    ident = json.loads((finished_simclr / "config.json").read_text())["identity"]
    actions = identity_actions(parser, ident)
    assert {a.dest for a in actions} == set(ident) - {"split__train_pool_sha256", "world_size"}
    actions.append(next(a for a in parser._actions if a.dest == "split"))
    files = fingerprint(finished_simclr)
    for action in actions:
        capsys.readouterr()
        rc = pretrain.main(base + changed_value(action, other_split))
        err = capsys.readouterr().err
        assert rc == 2 and refused_names(err, action), (action.dest, rc, err)
    assert fingerprint(finished_simclr) == files
    for reporting in (["--workers", "0"], ["--log-every", "7"], ["--ckpt-every", "2"], ["--progress-every", "1"],
                      ["--split", str(same_pool)]):
        assert pretrain.main(base + reporting) == 0  # changes no number: still the same finished run
    assert fingerprint(finished_simclr) == files


@pytest.mark.parametrize("task, workers", [("rotation", "0"), ("simclr", "2")])
def test_stop_at_step_and_resume_equal_an_uninterrupted_run(task, workers, tmp_path, split_file):
    """Stopped mid-epoch (3 cases of 8 slices make epochs of ~13 steps), with and without DataLoader workers."""
    extra = ("--steps", "20", "--ckpt-every", "4", "--workers", workers)
    ref = tmp_path / "ref"
    pretrain.run(pretrain_args(task, ref, split_file, *extra))
    out = tmp_path / "run"
    part = pretrain.run(pretrain_args(task, out, split_file, *extra, "--stop-at-step", "3"))
    assert part == {"status": "interrupted", "step": 3, "steps_total": 20, "signal": "stop-at-step"}
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3 and not (out / "encoder.pt").exists()
    assert pretrain.run(pretrain_args(task, out, split_file, *extra))["step"] == 20
    steps = [json.loads(l)["step"] for l in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    assert json.loads((out / "summary.json").read_text())["final_accuracy"] == \
        json.loads((ref / "summary.json").read_text())["final_accuracy"]
    a = torch.load(ref / "encoder.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "encoder.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to the uninterrupted run


def _cli(out, split, *extra):
    return [sys.executable, "-m", "pretrain", "--task", "rotation", "--split", str(split), "--out", str(out),
            "--steps", "30", "--batch-size", "4", "--max-cases", "2", "--ckpt-every", "1", "--log-every", "1", *extra]


def read_until(proc: subprocess.Popen, text: str) -> str:
    """The output of ``proc`` up to and including the first line that holds ``text`` (all of it if none does)."""
    seen = []
    for line in iter(proc.stdout.readline, b""):
        seen.append(line.decode())
        if text in seen[-1]:
            break
    return "".join(seen)


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_a_signal_mid_run_then_the_same_command_resumes(sig, tmp_path, split_file):
    """The run checkpoints every step and waits after step 5 (``--wait-at-step``); killed there, it leaves the
    checkpoint of step 4, and the same command resumes from it. (SIGTERM, SIGUSR1, SIGUSR2 and SIGINT are
    checked in the loop itself, test_engine, and on one rank of two, below; kill -9 leaves the last periodic
    checkpoint.)"""
    out = tmp_path / "run"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen(_cli(out, split_file, "--wait-at-step", "5"), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    head = read_until(proc, "waiting at step 5")
    proc.send_signal(sig)
    log = head + proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == -sig, log
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    done = subprocess.run(_cli(out, split_file), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {out / 'checkpoint.pt'} at step 4/30" in done.stdout
    assert json.loads((out / "summary.json").read_text())["step"] == 30
    steps = [json.loads(l)["step"] for l in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))


def test_simclr_two_processes_gather_negatives(tmp_path):
    """torchrun, 2 CPU processes (gloo): the loss on each rank uses negatives from both ranks."""
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_CHECK)
    r = subprocess.run(torchrun(2, str(script), str(tmp_path)), cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["gathered"] == pytest.approx(res["reference_global"], abs=1e-4)
        assert abs(res["gathered"] - res["local_only"]) > 1e-3


ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}


def rank_processes(parent: int) -> dict[int, int]:
    """rank -> pid of the worker processes a torchrun process started (from /proc: parent pid and RANK)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            env = dict(v.split("=", 1) for v in (stat.parent / "environ").read_bytes().decode().split("\0") if "=" in v)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(stat.parent.name)
    return out


def test_two_ranks_stop_together_on_a_signal_to_one_and_resume_to_the_same_encoder(tmp_path, split_file):
    """2-rank SimCLR (gloo): both ranks wait after step 3 (``--wait-at-step``) and rank 1 alone gets SIGTERM;
    both ranks stop after step 3, one checkpoint holds both ranks' random states, and running again ends
    bit-identical to an uninterrupted 2-rank run. A 1-process run is then refused on that folder, naming the
    world size."""
    base = ["-m", "pretrain", "--task", "simclr", "--split", str(split_file), "--steps", "40", "--batch-size", "4",
            "--max-cases", "2", "--device", "cpu", "--workers", "0", "--ckpt-every", "1000"]
    ref, out = tmp_path / "ref", tmp_path / "sig"
    r = subprocess.run(torchrun(2, *base, "--out", str(ref)), cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((ref / "summary.json").read_text())["world_size"] == 2
    proc = subprocess.Popen(torchrun(2, *base, "--out", str(out), "--wait-at-step", "3", "--log-every", "1"),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    head = read_until(proc, "waiting at step 3")
    ranks = rank_processes(proc.pid)
    assert sorted(ranks) == [0, 1], (ranks, head[-3000:])
    os.kill(ranks[1], signal.SIGTERM)
    log = head + proc.communicate(timeout=300)[0].decode()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 2, log[-3000:]
    assert "stopped (SIGTERM) at step 3/40" in log
    r = subprocess.run(torchrun(2, *base, "--out", str(out)), cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and f"resuming from {out / 'checkpoint.pt'} at step 3/40" in r.stdout, r.stderr[-2000:]
    a = torch.load(ref / "encoder.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "encoder.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    one = subprocess.run([sys.executable, *base, "--out", str(ref)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 2 and "world size (processes) 2 -> 1" in one.stderr, one.stderr


@pytest.mark.parametrize("task", ["rotation", "jigsaw", "simclr", "restore"])
def test_the_number_of_workers_changes_nothing(task, tmp_path, split_file):
    """Every view draws from its sample's own generator: 0 and 2 DataLoader workers give the same encoder."""
    enc = {}
    for w in (0, 2):
        pretrain.run(pretrain_args(task, tmp_path / f"w{w}", split_file, "--steps", "6", "--workers", str(w)))
        enc[w] = torch.load(tmp_path / f"w{w}" / "encoder.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(enc[0][k], enc[2][k]) for k in enc[0])


@pytest.mark.parametrize("task", ["rotation", "jigsaw", "simclr", "restore"])
def test_a_preview_draws_no_random_number(task, tmp_path, split_file, data_dir):
    args = pretrain_args(task, tmp_path / "run", split_file)
    t = pretrain.TASKS[task](args, models.create_encoder("unet_tiny"))
    loaded = scans.load_cases(scans.find_cases(data_dir)[:2], with_label=False)
    ds = scans.UnlabelledSlices(loaded, transform=t.views)
    batch = torch.utils.data.default_collate([ds[(0, i)] for i in range(4)])
    before = (torch.get_rng_state(), np.random.get_state()[1].copy())
    views = t.preview(batch)
    assert views.ndim == 4 and torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])


DDP_CHECK = r'''
import json, sys
import torch, torch.distributed as dist
sys.path.insert(0, "tests")
from helpers import reference_ntxent
import models
from pretrain.tasks.simclr import SimCLRModel
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = SimCLRModel(models.create_encoder("unet_tiny"), temperature=0.5, gather=True).eval()
local = SimCLRModel(models.create_encoder("unet_tiny"), temperature=0.5, gather=False).eval()
local.load_state_dict(model.state_dict())
g = torch.Generator().manual_seed(1)
x0, x1 = torch.rand(2 * world, 1, 32, 32, generator=g), torch.rand(2 * world, 1, 32, 32, generator=g)
mine = slice(2 * rank, 2 * rank + 2)
with torch.no_grad():
    gathered = model.loss_on_views(x0[mine], x1[mine])["loss"].item()
    local_only = local.loss_on_views(x0[mine], x1[mine])["loss"].item()
    z0 = model.head(models.pooled_features(model.encoder, x0)); z1 = model.head(models.pooled_features(model.encoder, x1))
    n = len(x0); rows = list(range(2 * rank, 2 * rank + 2)) + list(range(n + 2 * rank, n + 2 * rank + 2))
    ref = reference_ntxent(z0, z1, 0.5, rows).item()
json.dump({"gathered": gathered, "local_only": local_only, "reference_global": ref}, open(f"{sys.argv[1]}/rank{rank}.json", "w"))
dist.destroy_process_group()
'''


def test_jigsaw_tiles_never_touch():
    """Neighbouring tiles are at least min_gap apart for every cell size the hippocampus slices give."""
    rng = np.random.default_rng(0)
    for cell in range(6, 17):
        for _ in range(200):
            t, off = jigsaw.tile_layout(cell, 0.75, 2, rng)
            starts = np.arange(3)[:, None] * cell + off[..., 0]  # rows: (grid row, grid col)
            gaps_down = starts[1:, :] - (starts[:-1, :] + t)
            starts_x = np.arange(3)[None, :] * cell + off[..., 1]
            gaps_right = starts_x[:, 1:] - (starts_x[:, :-1] + t)
            assert gaps_down.min() >= 2 and gaps_right.min() >= 2, (cell, t, off)
            assert (off >= 0).all() and (off + t <= cell).all()
    with pytest.raises(ValueError, match="no room"):
        jigsaw.tile_layout(3, 0.75, 2, rng)


def test_a_missing_device_or_an_out_inside_the_data_is_refused_before_anything_is_created(tmp_path, split_file, data_dir,
                                                                                          capsys):
    for dev in ("cuda:99", "tpu"):
        out = tmp_path / dev
        assert pretrain.main(["--task", "rotation", "--split", str(split_file), "--out", str(out), "--device", dev]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and dev in err and not out.exists(), err
    assert pretrain.main(["--task", "rotation", "--split", str(split_file), "--out", str(data_dir / "run")]) == 2
    assert "lies in the dataset folder" in capsys.readouterr().err and not (data_dir / "run").exists()
    assert pretrain.main(["--task", "rotation", "--split", str(split_file), "--out", str(tmp_path / "r"), "--lr", "inf"]) == 2
    assert "--lr must be a finite number > 0, got inf" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_restore_corrupts_only_the_scanned_content_and_each_corruption_changes_it():
    from pretrain.tasks.restore import Corruptions, RestoreViews
    img, box = _slice_with_padding()
    for name, c in (("nonlinear", Corruptions(1, 0, 0)), ("shuffle", Corruptions(0, 1, 0)),
                    ("outpaint", Corruptions(0, 0, 1, 1)), ("inpaint", Corruptions(0, 0, 1, 0)),
                    ("masks", Corruptions(0, 0, 0, mask_ratio=0.5))):
        x, y, w = RestoreViews(c)(img, box, scans.sample_rng(0, 0, 1))
        assert torch.equal(y[0], torch.from_numpy(img)) and w.sum() == 36 * 52, name
        assert torch.equal(x[0][w[0] == 0], y[0][w[0] == 0]), name  # the padding is left as it is
        assert not torch.equal(x, y) and 0 <= x.min() and x.max() <= 1, name
    again = RestoreViews(Corruptions())(img, box, scans.sample_rng(0, 0, 1))
    assert torch.equal(again[0], RestoreViews(Corruptions())(img, box, scans.sample_rng(0, 0, 1))[0])
    nothing = RestoreViews(Corruptions(0, 0, 0))(img, box, scans.sample_rng(0, 0, 1))
    assert torch.equal(nothing[0], nothing[1])
    with pytest.raises(ValueError, match="--mask-ratio must be in"):
        Corruptions(mask_ratio=1.0)
