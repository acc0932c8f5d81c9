"""The GPU smoke script refuses cleanly where there is no GPU (CI never has one)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run benchmarks/gpu_smoke.sh itself")
def test_gpu_smoke_exits_2_in_one_line_without_a_gpu(tmp_path):
    r = subprocess.run(["bash", "benchmarks/gpu_smoke.sh", str(tmp_path / "work")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PY": sys.executable})
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(out) == 1 and "no CUDA GPU" in out[0], (r.returncode, out)
    assert not (tmp_path / "work").exists()  # nothing was run
