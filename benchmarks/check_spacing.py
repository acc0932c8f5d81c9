"""Does training at a target spacing work? The embedded volumes upsampled 4x in-plane (0.25 mm),
fine-tuned with `--spacing 1 1` and patches of the usual size, against the same run on the native
volumes (1 mm). Predictions go back to each scan's own grid before scoring, so the upsampled run
is scored on 4x finer label maps (the native labels, upsampled by nearest neighbour).

    .venv/bin/python benchmarks/check_spacing.py [--fraction 0.1] [--steps 400] [--out results/spacing]

Writes OUT/spacing.json (both runs' test Dice, the difference, commands, commit, machine). Only
the cases the runs read are upsampled (into OUT/../runs, uncompressed NIfTI).
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

import engine
import scans
from atomicio import write_json

ROOT = Path(__file__).resolve().parents[1]


def upsample_dataset(src: Path, dst: Path, case_ids: set[str], factor: int) -> None:
    """``dst``: the cases ``case_ids`` of ``src`` with axes 0 and 1 upsampled ``factor`` times
    (images linear, labels nearest; the affine scaled to match), plus dataset.json and protocol.json."""
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    if (src / scans.PROTOCOL).is_file():
        shutil.copy(src / scans.PROTOCOL, dst / scans.PROTOCOL)
    meta = json.loads((src / "dataset.json").read_text())  # class names; its file list names .nii.gz files
    write_json(dst / "dataset.json", {k: v for k, v in meta.items() if k not in ("training", "test", "numTraining", "numTest")})
    for case in scans.find_cases(src):
        if case.case_id not in case_ids:
            continue
        for path, sub, order in ((case.image, "imagesTr", 1), (case.label, "labelsTr", 0)):
            img = nib.load(path)
            arr = np.asarray(img.dataobj).astype(np.float32 if order else np.uint8)
            up = ndimage.zoom(arr, (factor, factor, 1), order=order, mode="nearest", grid_mode=True)
            # new voxel i lies at old index (i + 0.5) / factor - 0.5 (zoom's grid mode)
            shift = np.diag([1.0, 1.0, 1.0, 1.0])
            shift[:2, 3] = 0.5 / factor - 0.5
            affine = img.affine @ shift @ np.diag([1 / factor, 1 / factor, 1, 1])
            out = nib.Nifti1Image(up.astype(np.float32 if order else np.uint8), affine)
            nib.save(out, str(dst / sub / f"{case.case_id}.nii"))


def finetune(data: Path, split: Path, out: Path, args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "finetune", "--data", str(data), "--split", str(split), "--out", str(out), *args]
    t0 = time.time()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"command": " ".join(cmd[1:]), "mean_dice": m["mean_dice"], "dice_per_class": m["dice_per_class"],
            "num_cases": m["num_cases"], "wall_time_s": round(time.time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/msd_hippocampus")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--out", default="results/spacing")
    p.add_argument("--runs", default="runs/spacing")
    a = p.parse_args()
    runs = ROOT / a.runs
    runs.mkdir(parents=True, exist_ok=True)
    src = ROOT / a.data
    split = runs / "splits.json"
    cases = [c.case_id for c in scans.find_cases(src) if c.label is not None]
    splits = scans.make_splits(cases, 0.2, 0, [a.fraction], [0], dataset=src.name, groups=scans.load_protocol(src).subjects)
    write_json(split, splits)
    need = set(splits["test"]) | set(splits["train_pool"])
    up = runs / f"upsampled{a.factor}x"
    if not (up / "dataset.json").is_file():
        upsample_dataset(src, up, need, a.factor)
    common = ["--arch", "unet", "--encoder", "unet_tiny", "--init", "random", "--fraction", str(a.fraction),
              "--label-seed", "0", "--seed", "0", "--steps", str(a.steps), "--batch-size", "32",
              "--warmup-fraction", "0.2", "--class-weights", "1", "3", "3", "--device", "cpu"]
    native = finetune(src, split, runs / "native", common)
    spaced = finetune(up, split, runs / f"upsampled{a.factor}x_spacing1", common + ["--spacing", "1", "1"])
    result = {"native": native, "upsampled_at_spacing_1mm": spaced,
              "difference": spaced["mean_dice"] - native["mean_dice"], "factor": a.factor,
              "command": " ".join(sys.argv), "provenance": engine.provenance()}
    write_json(ROOT / a.out / "spacing.json", result)
    print(f"native {native['mean_dice']:.4f}, upsampled {a.factor}x at --spacing 1 1 {spaced['mean_dice']:.4f}, "
          f"difference {result['difference']:+.4f} -> {a.out}/spacing.json")


if __name__ == "__main__":
    main()
