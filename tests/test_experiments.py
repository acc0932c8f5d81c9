"""The grid runner: configs, an end-to-end tiny reproduction through submitit's local executor."""
import csv
import json
import os
import re
import signal
from pathlib import Path

import pytest
from PIL import Image

from engine import ConfigError
from experiments import load_config
from experiments.__main__ import main as experiments_main
from experiments.grid import Run, finetune_runs, pretrain_runs
from experiments.reproduce import Schedule, plan
from experiments.state import run_state
from helpers import hold_folder, write_config

ROOT = Path(__file__).resolve().parents[1]




def test_every_committed_config_loads_and_plans(monkeypatch):
    monkeypatch.chdir(ROOT)
    for path in sorted((ROOT / "experiments" / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert finetune_runs(cfg) and pretrain_runs(cfg), path.name


def test_the_lowlabel_redraw_shares_random_init_runs_and_draws_every_encoder_anew(monkeypatch):
    monkeypatch.chdir(ROOT)
    first, second = (load_config(ROOT / "experiments" / "configs" / f"{n}.yaml") for n in ("lowlabel", "lowlabel_redraw"))
    runs = [{r.out: r for r in finetune_runs(c)} for c in (first, second)]
    assert runs[0].keys() & runs[1].keys() == {o for o, r in runs[0].items() if r.cell["init"] == "random"} != set()
    assert len(runs[0]) == len(runs[1]) == 150
    assert {r.cell["pretrain_seed"] for r in runs[1].values()} == {None, 3, 4, 5}
    assert not {r.out for r in pretrain_runs(first)} & {r.out for r in pretrain_runs(second)}


def test_sigterm_stops_a_grid_like_ctrl_c_cancelling_its_jobs_in_flight():
    """A grid started in the background ignores Ctrl-C; ``kill PID`` must still cancel its jobs (each then
    checkpoints) rather than leave them running. The signal is sent from inside the loop, at a known point."""
    class Job:
        job_id, cancelled, polls = "1", False, 0

        def done(self):
            self.polls += 1
            if self.polls == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return False

        def cancel(self, check=True):
            self.cancelled = True

    class Executor:
        jobs = []

        def submit(self, fn, *args):
            self.jobs.append(Job())
            return self.jobs[-1]

    ex = Executor()
    before = signal.getsignal(signal.SIGTERM)
    runs = [Run("pretrain", "pretrain/rotation/P0", "unused", ("--steps", "1")),
            Run("finetune", "unet/rotation/frac1/L0_S0_P0", "unused", ("--steps", "1"), needs=("pretrain/rotation/P0",))]
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        Schedule(runs, ex, parallel=2, threads=1).run()
    assert len(ex.jobs) == 1 and ex.jobs[0].cancelled  # the fine-tuning run never started
    assert signal.getsignal(signal.SIGTERM) is before


def test_config_checks_keys_and_drops_imagenet_without_weights(tmp_path, small_msd):
    cfg = load_config(write_config(tmp_path, small_msd, inits=["random", "imagenet", "simclr"]))
    assert cfg["inits"] == ["random", "simclr"] and cfg["name"] == "tiny"
    bad = write_config(tmp_path, small_msd, finetune={"stepz": 3})
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        load_config(bad)
    bad = write_config(tmp_path, small_msd, pretrain={"task_args": {"simclr": {"tile": 3}}})
    with pytest.raises(ConfigError, match=r"task_args.simclr has unknown option 'tile'; simclr takes \['temperature'"):
        load_config(bad)
    bad = write_config(tmp_path, small_msd, finetune={"args": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match="finetune.args has unknown option 'lrr'"):
        load_config(bad)
    bad = write_config(tmp_path, small_msd, tasks=["simclr", "colourise"])
    with pytest.raises(ConfigError, match=r"unknown pretext task 'colourise'; expected one of \['jigsaw', 'restore', 'rotation', 'simclr'\]"):
        load_config(bad)
    assert experiments_main(["reproduce", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_normalization_is_one_setting_of_the_whole_grid(tmp_path, small_msd):
    default = load_config(write_config(tmp_path, small_msd))
    ct = load_config(write_config(tmp_path, small_msd, name="ct", norm="ct", window=[40, 400]))
    for run in pretrain_runs(ct) + finetune_runs(ct):
        assert " ".join(run.argv).count("--norm ct --window 40 400") == 1, run.key
    assert not any("--norm" in r.argv for r in pretrain_runs(default) + finetune_runs(default))
    assert pretrain_runs(ct)[0].out != pretrain_runs(default)[0].out  # another encoder, another folder
    for bad, message in [(dict(norm="ct"), "norm ct needs window LEVEL WIDTH"),
                         (dict(norm="zscore", window=[40, 400]), "window is used with norm ct only"),
                         (dict(norm="minmax"), "norm must be one of"),
                         (dict(pretrain={"args": {"norm": "zscore"}}), "pretrain.args sets 'norm'; set it at the top"),
                         (dict(finetune={"args": {"window": [1, 2]}}), "finetune.args sets 'window'")]:
        with pytest.raises(ConfigError, match=message):
            load_config(write_config(tmp_path, small_msd, **bad))


def test_grid_runs_replicates_and_dependencies(tmp_path, small_msd):
    cfg = load_config(write_config(tmp_path, small_msd, label_seeds={0.5: [0, 1], 1.0: [0]}, train_seeds=[0, 1]))
    pre, ft = pretrain_runs(cfg), finetune_runs(cfg)
    assert [r.key for r in pre] == ["pretrain/simclr/P0"] and "/runs/pretrain/simclr/unet_tiny_s0_" in pre[0].out
    assert len(ft) == 2 * 2 * (4 + 2)  # archs x inits x (2 label seeds x 2 training seeds at 50%, 1 x 2 at 100%)
    ssl = [r for r in ft if r.cell["init"] == "simclr"]
    assert all(r.needs == ("pretrain/simclr/P0",) and r.argv[r.argv.index("--init") + 1] == f"{pre[0].out}/encoder.pt"
               for r in ssl)
    assert {r.out.split("runs/tiny/")[1] for r in ft} >= {"unet/random/frac0.5/L1_S0", "transunet/simclr/frac1/L0_S1_P0"}
    # a replicate's runs differ only in the init: paired
    a = next(r for r in ft if r.key == "unet/random/frac0.5/L1_S1").argv
    b = next(r for r in ft if r.key == "unet/simclr/frac0.5/L1_S1_P0").argv
    assert [x for x in a if x not in b] == ["random", a[a.index("--out") + 1]]
    assert a[a.index("--label-seed") + 1] == "1" and a[a.index("--seed") + 1] == "1"
    other = load_config(write_config(tmp_path, small_msd, name="other", label_seeds=[3]))
    assert pretrain_runs(other)[0].out == pre[0].out  # same data, split and pretraining: one shared encoder


def test_seeds_per_architecture(tmp_path, small_msd):
    """``train_seeds: {unet: [0, 1], transunet: [0]}``: each architecture its own replicates."""
    cfg = load_config(write_config(tmp_path, small_msd, label_seeds=[0, 1], train_seeds={"unet": [0, 1], "transunet": [0]}))
    count = lambda arch: sum(r.cell["arch"] == arch for r in finetune_runs(cfg))  # noqa: E731
    assert (count("unet"), count("transunet")) == (2 * 2 * 2 * 2, 2 * 2 * 2 * 1)  # inits x fractions x label x train
    with pytest.raises(ConfigError, match=r"train_seeds per architecture must name each of \['unet', 'transunet'\]"):
        load_config(write_config(tmp_path, small_msd, "bad.yaml", train_seeds={"unet": [0, 1]}))


def test_pretraining_seeds_budgets_whole_network_tasks_and_init_recipes(tmp_path, small_msd):
    """Three pretraining seeds: each task pretrained three times, a replicate fine-tunes the encoder of seed
    label_seed % 3 (so label seeds nest in pretraining runs); budgets multiply the epochs; restore is pretrained
    once per architecture and fine-tuned from its network.pt; an init's own recipe reaches its runs only."""
    cfg = load_config(write_config(
        tmp_path, small_msd, tasks=["simclr", "restore"], inits=["random", "simclr", "restore"], fractions=[0.5],
        label_seeds=[0, 1, 2, 3], pretrain={"epochs": 2, "batch_size": 8, "seeds": [0, 1, 2], "budgets": [1, 4]},
        finetune={"steps": 2, "batch_size": 8, "init_args": {"unet": {"restore": {"encoder_lr_scale": 0.1}}}}))
    pre = {r.key: r for r in pretrain_runs(cfg)}
    assert len(pre) == (1 + 2) * 2 * 3  # (simclr + restore per arch) x budgets x seeds
    assert "pretrain/restore-transunet@4x/P2" in pre and len({r.out for r in pre.values()}) == len(pre)
    r = pre["pretrain/simclr@4x/P1"].argv
    assert r[r.index("--epochs") + 1] == "8" and r[r.index("--seed") + 1] == "1" and "--arch" not in r
    assert pre["pretrain/restore-unet/P0"].argv[-2:] != ("--arch", "unet") and "--arch" in pre["pretrain/restore-unet/P0"].argv
    ft = {r.key: r for r in finetune_runs(cfg)}
    run = ft["transunet/restore@4x/frac0.5/L3_S0_P0"]  # label seed 3 -> pretraining seed 3 % 3 = 0
    assert run.needs == ("pretrain/restore-transunet@4x/P0",)
    assert run.argv[run.argv.index("--init") + 1] == pre["pretrain/restore-transunet@4x/P0"].out + "/network.pt"
    assert ft["unet/simclr/frac0.5/L2_S0_P2"].needs == ("pretrain/simclr/P2",)
    assert "--encoder-lr-scale" in ft["unet/restore+encoder_lr_scale0.1/frac0.5/L0_S0_P0"].argv
    assert "--encoder-lr-scale" not in ft["transunet/restore/frac0.5/L0_S0_P0"].argv
    assert "--encoder-lr-scale" not in ft["unet/simclr/frac0.5/L0_S0_P0"].argv
    for bad, says in ((dict(pretrain={"seeds": [0, 0]}), "pretrain.seeds must be distinct integers"),
                      (dict(pretrain={"budgets": [0]}), "pretrain.budgets must be distinct integers >= 1"),
                      (dict(tasks=["restore"], inits=["random"], pretrain={"task_args": {"restore": {"arch": "unet"}}}),
                       "restore is pretrained for each of archs"),
                      (dict(finetune={"init_args": {"unet": {"rotation": {}}}}), "not one of the inits")):
        with pytest.raises(ConfigError, match=says):
            load_config(write_config(tmp_path, small_msd, **bad))


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """A tiny grid (SimCLR and random init, U-Net and TransUNet, 50% and 100%) reproduced once through submitit's
    local executor: (config path, its folder)."""
    tmp = tmp_path_factory.mktemp("grid")
    data = tmp / "msd_small"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
        for f in sorted((ROOT / "data" / "msd_hippocampus" / sub).glob("*.nii.gz"))[:6]:
            (data / sub / f.name).symlink_to(f)
    path = write_config(tmp, data, label_seeds={0.5: [0, 1], 1.0: [0]})
    assert experiments_main(["reproduce", "--config", str(path), "--executor", "local"]) == 0
    return path, tmp


def test_a_grid_writes_its_table_from_paired_replicates(tiny_grid):
    _, tmp = tiny_grid
    res = tmp / "results" / "tiny"
    for name in ("table.md", "table.csv", "transfer_curve.png", "runs.jsonl", "splits.json"):
        assert (res / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(res / "table.csv")))
    assert list(rows[0]) == ["arch", "init", "fraction", "n", "mean_dice", "sd", "delta_vs_random", "ci95_low",
                             "ci95_high", "collapsed", "n_paired", "pretrain_seeds"]
    assert len(rows) == 2 * 2 * 2
    assert {r["init"] for r in rows} == {"random", "simclr"} and {r["arch"] for r in rows} == {"unet", "transunet"}
    half = {(r["arch"], r["init"]): r for r in rows if r["fraction"] == "0.5"}
    assert all(r["n"] == "2" and r["sd"] for r in half.values())
    s = half[("unet", "simclr")]
    assert float(s["ci95_low"]) <= float(s["delta_vs_random"]) <= float(s["ci95_high"]) and s["pretrain_seeds"] == "1"
    records = [json.loads(line) for line in (res / "runs.jsonl").read_text().splitlines()]
    by = {(r["arch"], r["init"], r["label_seed"]): r["mean_dice"] for r in records
          if r["kind"] == "finetune" and r["fraction"] == 0.5}
    assert float(s["delta_vs_random"]) == pytest.approx(
        sum(by[("unet", "simclr", seed)] - by[("unet", "random", seed)] for seed in (0, 1)) / 2, abs=1e-4)
    assert not half[("unet", "random")]["delta_vs_random"] and s["n_paired"] == "2"
    whole = {(r["arch"], r["init"]): r for r in rows if r["fraction"] == "1.0"}
    assert whole[("unet", "simclr")]["delta_vs_random"] and not whole[("unet", "simclr")]["ci95_low"]  # 1 replicate
    md = (res / "table.md").read_text()
    assert "| random |" in md and "| simclr |" in md and "Reference" in md and "python -m experiments reproduce" in md
    assert "## What this shows" in md and "## What it does not show" in md and "## Encoders" in md
    with Image.open(res / "transfer_curve.png") as im:
        assert im.size[0] > 400


def test_every_record_names_its_cell_its_encoder_and_where_it_came_from(tiny_grid):
    _, tmp = tiny_grid
    res = tmp / "results" / "tiny"
    records = [json.loads(line) for line in (res / "runs.jsonl").read_text().splitlines()]
    ft = [r for r in records if r["kind"] == "finetune"]
    assert len(ft) == 12 and len(records) == 13
    assert all("label_seed" in r and "seed" in r and "collapsed" in r and len(r["cases"]) == 2 for r in ft)
    assert {r["pretrain_seed"] for r in ft if r["init"] == "simclr"} == {0}
    assert {r["pretrain_seed"] for r in ft if r["init"] == "random"} == {None}
    split = json.loads((res / "splits.json").read_text())
    for r in ft:
        assert r["commit"] and r["wall_time_s"] > 0 and r["train_cases"] and not set(r["train_cases"]) & set(split["test"])
    runs = tmp / "runs" / "tiny"
    assert list((runs / "unet" / "random" / "frac0.5" / "L1_S0").glob("events.out.tfevents*"))
    assert list((tmp / "runs" / "pretrain" / "simclr").glob("unet_tiny_s0_*/events.out.tfevents*"))
    assert (runs / "embeddings" / "projector_config.pbtxt").is_file()


def test_the_same_command_again_only_collects_and_records_rebuild_the_table(tiny_grid, capsys):
    path, tmp = tiny_grid
    res = tmp / "results" / "tiny"
    before = (res / "table.csv").read_bytes()
    capsys.readouterr()
    assert experiments_main(["reproduce", "--config", str(path), "--executor", "local"]) == 0
    assert "13 already finished, 0 running elsewhere, 0 to run" in capsys.readouterr().out
    assert (res / "table.csv").read_bytes() == before
    records = (res / "runs.jsonl").read_bytes()  # the same table from the records alone, which stay as they are
    assert experiments_main(["collect", "--config", str(path), "--records", str(res / "runs.jsonl")]) == 0
    assert (res / "table.csv").read_bytes() == before and (res / "runs.jsonl").read_bytes() == records
    assert "recomputed from those records (no run re-run)" in (res / "table.md").read_text()
    bad = tmp / "bad" / "runs.jsonl"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text('{"kind": "finetune"}\nnot json\n')
    capsys.readouterr()
    assert experiments_main(["collect", "--config", str(path), "--records", str(bad)]) == 2
    assert f"{bad}:2: not a JSON record" in capsys.readouterr().err


def test_status_shows_each_run_and_a_run_held_elsewhere_is_left_to_it(tiny_grid, capsys):
    path, tmp = tiny_grid
    capsys.readouterr()
    assert experiments_main(["status", "--config", str(path)]) == 0
    assert "13 done" in capsys.readouterr().out
    holder = hold_folder(tmp / "runs" / "tiny" / "unet" / "random" / "frac1" / "L0_S0")
    try:
        assert experiments_main(["status", "--config", str(path)]) == 0
        assert re.search(rf"unet/random/frac1/L0_S0 +running +process {holder.pid}", capsys.readouterr().out)
        _, todo, elsewhere = plan(load_config(path))
        assert not todo and [r.key for r in elsewhere] == ["unet/random/frac1/L0_S0"]
    finally:
        holder.kill()
        holder.wait()


def test_a_changed_pretext_setting_makes_every_run_on_its_encoder_stale(tiny_grid):
    """Another encoder (a new folder of its own), and every fine-tuning run on it holds other settings by the
    trainers' own rule (its --init file changed), which reproduce moves aside and runs again; the random-init
    runs stay done. (The states are read, not acted on: the shared grid stays as it is.)"""
    path, tmp = tiny_grid
    changed = load_config(write_config(tmp, tmp / "msd_small", "changed.yaml", name="tiny", label_seeds={0.5: [0, 1], 1.0: [0]},
                                       pretrain={"epochs": 1, "batch_size": 8, "args": {"steps": 2},
                                                 "task_args": {"simclr": {"temperature": 0.5}}}))
    states = {r.key: run_state(r) for r in pretrain_runs(changed) + finetune_runs(changed)}
    assert states.pop("pretrain/simclr/P0") == "new"
    assert {k for k, v in states.items() if v == "other"} == {
        f"{a}/simclr/{f}/{rep}" for a in ("transunet", "unet") for f, rep in
        (("frac0.5", "L0_S0_P0"), ("frac0.5", "L1_S0_P0"), ("frac1", "L0_S0_P0"))}
    assert {v for k, v in states.items() if "/random/" in k} == {"done"}


def test_a_grid_that_asks_for_a_missing_gpu_stops_before_starting_anything(tmp_path, small_msd, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = write_config(tmp_path, small_msd, device="cuda")
    assert experiments_main(["reproduce", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err and "nothing was started" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("over, says", [
    (dict(finetune={"steps": -5}), "finetune.steps for fraction 0.5 must be an integer >= 1, got -5"),
    (dict(finetune={"batch_size": 0}), "finetune.batch_size for fraction 0.5 must be an integer >= 1, got 0"),
    (dict(cpus_per_job=0), "cpus_per_job must be an integer >= 1, got 0"),
    (dict(timeout_min=0), "timeout_min must be an integer >= 1"),
    (dict(finetune={"args": {"lr": -1.0}}), "run unet/random/frac0.5/L0_S0: --lr must be a finite number > 0, got -1.0"),
    (dict(pretrain={"args": {"size": [0, 64]}}), "run pretrain/simclr/P0: --size must be positive"),
])
def test_config_values_that_cannot_run_stop_it_before_anything_is_written(tmp_path, small_msd, capsys, over, says):
    cfg = write_config(tmp_path, small_msd, **over)
    assert experiments_main(["reproduce", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
