"""The grid runner: configs, an end-to-end tiny reproduction through submitit's local executor."""
import csv
import json

import pytest
import yaml
from PIL import Image

from experiments import load_config
from experiments.__main__ import main as experiments_main
from experiments.grid import finetune_runs, pretrain_runs


def write_config(tmp_path, data, **over):
    cfg = {
        "data": str(data), "split": {"test_fraction": 0.34, "seed": 0},
        "encoder": "unet_tiny", "tasks": ["simclr"], "inits": ["random", "simclr"],
        "archs": ["unet", "transunet"], "fractions": [0.5, 1.0], "seeds": [0], "device": "cpu",
        "runs_dir": str(tmp_path / "runs" / "tiny"), "results_dir": str(tmp_path / "results" / "tiny"),
        "cpus_per_job": 1, "timeout_min": 10,
        "pretrain": {"epochs": 1, "batch_size": 8, "args": {"steps": 2}},
        "finetune": {"steps": {0.5: 2, 1.0: 3}, "batch_size": 8, "args": {"max_test_cases": 2, "eval_every": 1}},
        "embeddings": {"slices": 16},
        **over,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_config_checks_keys_and_drops_imagenet_without_weights(tmp_path, small_msd):
    cfg = load_config(write_config(tmp_path, small_msd, inits=["random", "imagenet", "simclr"]))
    assert cfg["inits"] == ["random", "simclr"] and cfg["name"] == "tiny"
    bad = write_config(tmp_path, small_msd, finetune={"stepz": 3})
    with pytest.raises(ValueError, match="unknown key 'stepz'"):
        load_config(bad)
    assert experiments_main(["reproduce", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_grid_runs_and_dependencies(tmp_path, small_msd):
    cfg = load_config(write_config(tmp_path, small_msd))
    pre, ft = pretrain_runs(cfg), finetune_runs(cfg)
    assert [r.key for r in pre] == ["pretrain/simclr"]
    assert len(ft) == 2 * 2 * 2
    ssl = [r for r in ft if r.cell["init"] == "simclr"]
    assert all(r.needs == ("pretrain/simclr",) and "encoder.pt" in r.argv[r.argv.index("--init") + 1] for r in ssl)
    assert {r.out.split("runs/tiny/")[1] for r in ft} >= {"unet/random/frac0.5/seed0", "transunet/simclr/frac1/seed0"}


def test_tiny_reproduction_end_to_end_and_idempotent(tmp_path, small_msd, capsys):
    path = write_config(tmp_path, small_msd)
    assert experiments_main(["reproduce", "--config", str(path), "--executor", "local"]) == 0
    res = tmp_path / "results" / "tiny"
    for name in ("table.md", "table.csv", "transfer_curve.png", "runs.jsonl", "splits.json"):
        assert (res / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(res / "table.csv")))
    assert len(rows) == 2 * 2 * 2 and all(0 <= float(r["mean_dice"]) <= 1 for r in rows)
    assert {r["init"] for r in rows} == {"random", "simclr"} and {r["arch"] for r in rows} == {"unet", "transunet"}
    md = (res / "table.md").read_text()
    assert "| random |" in md and "| simclr |" in md and "Reference" in md and "python -m experiments reproduce" in md
    with Image.open(res / "transfer_curve.png") as im:
        assert im.size[0] > 400
    records = [json.loads(l) for l in (res / "runs.jsonl").read_text().splitlines()]
    ft = [r for r in records if r["kind"] == "finetune"]
    assert len(ft) == 8 and len(records) == 9
    split = json.loads((res / "splits.json").read_text())
    for r in ft:
        assert r["commit"] and r["wall_time_s"] > 0 and r["train_cases"] and not set(r["train_cases"]) & set(split["test"])
    runs = tmp_path / "runs" / "tiny"
    assert list((runs / "unet" / "random" / "frac0.5" / "seed0").glob("events.out.tfevents*"))
    assert list((runs / "pretrain" / "simclr_unet_tiny").glob("events.out.tfevents*"))
    assert (runs / "embeddings" / "projector_config.pbtxt").is_file()
    before = (res / "table.csv").read_bytes()
    capsys.readouterr()
    assert experiments_main(["reproduce", "--config", str(path), "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert "9 already finished, 0 to run" in out
    assert (res / "table.csv").read_bytes() == before
    assert experiments_main(["status", "--config", str(path)]) == 0
    assert "9 done" in capsys.readouterr().out
