"""Seconds per fine-tuning step at a low label fraction with DataLoader workers.

    .venv/bin/python benchmarks/bench_lowlabel_loader.py [--repo .] [--workers 2] [--fraction 0.01] \
        [--steps 120] [--repeats 3] [--out results/bench/lowlabel_loader.json]

At 1% of the embedded data (2 volumes, about 70 slices) an epoch is two batches of 32. A trainer
that builds its DataLoader per epoch starts its worker processes every two steps; one iterator
for the whole run starts them once. This runs ``python -m finetune`` (U-Net, unet_tiny, random
init) in ``--repo`` (a checkout: run it on two commits to compare), reads the images/s the run
logs every 10 steps, and reports the median seconds per step after the first 10 steps, per
repeat and over all repeats. The runs' own numbers (Dice) are not the point and are not printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from atomicio import write_json
from engine import git_info, machine_info


def seconds_per_step(repo: Path, work: Path, args, repeat: int) -> float:
    split = work / "split.json"
    if not split.exists():
        subprocess.run([sys.executable, "-m", "scans", "split", "data/msd_hippocampus", "--out", str(split)], cwd=repo,
                       check=True, capture_output=True)
    out = work / f"run{repeat}"
    cmd = [sys.executable, "-m", "finetune", "--arch", "unet", "--encoder", "unet_tiny", "--init", "random",
           "--fraction", str(args.fraction), "--split", str(split), "--steps", str(args.steps), "--batch-size", "32",
           "--workers", str(args.workers), "--device", "cpu", "--log-every", "10", "--max-test-cases", "1",
           "--watch-cases", "0", "--seed", str(repeat), "--out", str(out)]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run(cmd, cwd=repo, check=True, capture_output=True, env=env)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if r["step"] > 10 and "images_per_s" in r]
    return 32 / statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=".", help="the checkout whose python -m finetune is timed")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    a = p.parse_args()
    repo = Path(a.repo).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        per = [seconds_per_step(repo, Path(tmp), a, r) for r in range(a.repeats)]
    res = {"seconds_per_step": per, "median": statistics.median(per), "repo": str(repo), "args": vars(a),
           "command": "python " + " ".join(sys.argv),
           **git_info(repo), "machine": machine_info()}
    print(f"{repo} ({res['commit'][:7] if res['commit'] else '?'}): fraction {a.fraction}, {a.workers} workers: "
          f"{', '.join(f'{s:.3f}' for s in per)} s/step (median {res['median']:.3f})")
    if a.out:
        write_json(a.out, res)


if __name__ == "__main__":
    main()
