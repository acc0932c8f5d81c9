"""A real single-node SLURM cluster (slurm/local-cluster.sh): submit through submitit and sbatch,
requeue a running job and check it resumes. The cluster is stopped even when a test fails."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "local-cluster.sh"
STATE = "/tmp/ssl-medseg-slurm"
PROFILE = ROOT / "slurm" / "profiles" / "local-test.yaml"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("apt-get"),
                                reason="the local SLURM cluster needs root and apt-get")


@pytest.fixture(scope="module")
def slurm_cluster():
    env = {**os.environ, "SLURM_LOCAL_DIR": STATE}
    try:
        up = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        os.environ["SLURM_CONF"] = f"{STATE}/slurm.conf"
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)
        os.environ.pop("SLURM_CONF", None)


def squeue_state(job_id):
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return out or None


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def release_hold(job_id):
    """A requeued job waits ~2 min (Reason=BeginTime); start it now."""
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)


def test_slurm_requeue_resumes_pretraining(slurm_cluster, tmp_path, data_dir):
    split = tmp_path / "splits.json"
    subprocess.run([sys.executable, "-m", "scans", "split", str(data_dir), "--fractions", "1.0", "--out", str(split)], check=True)
    out = tmp_path / "pre"
    r = subprocess.run([sys.executable, "-m", "pretrain", "--task", "rotation", "--split", str(split), "--out", str(out),
                        "--steps", "3000", "--batch-size", "8", "--max-cases", "4", "--ckpt-every", "20", "--log-every", "20",
                        "--device", "cpu", "--slurm", str(PROFILE)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = r.stdout.split("submitted pretraining job ")[1].split(";")[0]
    wait_for(lambda: (out / "checkpoint.pt").is_file(), 240, "the first checkpoint")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait_for(lambda: squeue_state(job_id) in ("PENDING", "REQUEUED", None) and squeue_state(job_id) != "RUNNING", 60, "the requeue")
    release_hold(job_id)
    wait_for(lambda: (out / "summary.json").is_file(), 420, "the requeued job to finish")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 3000
    log = next((out / "slurm").glob(f"{job_id}_0_log.out")).read_text()
    resumed = [l for l in log.splitlines() if l.startswith("resuming from")]
    assert resumed, log[-2000:]
    assert int(resumed[-1].split(" at step ")[1].split("/")[0]) >= 20  # continued, not from zero
    steps = [json.loads(l)["step"] for l in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3000


def test_slurm_grid_pretrain_finetune_collect(slurm_cluster, tmp_path, small_msd):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_experiments import write_config
    cfg = write_config(tmp_path, small_msd, archs=["unet"])
    r = subprocess.run([sys.executable, "-m", "experiments", "reproduce", "--config", str(cfg), "--executor", "slurm",
                        "--profile", str(PROFILE)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "afterok:" in r.stdout and "afterany:" in r.stdout
    registry = json.loads((tmp_path / "runs" / "tiny" / "slurm_jobs.json").read_text())
    assert len(registry) == 1 + 4 + 1  # pretrain, 4 fine-tuning cells, collector
    collect_id = registry["collect"]["job_id"]
    wait_for(lambda: squeue_state(collect_id) is None, 540, "the collector job")
    res = tmp_path / "results" / "tiny"
    assert (res / "table.csv").is_file(), Path(registry["collect"]["stderr"]).read_text()[-2000:]
    runs = [json.loads(l) for l in (res / "runs.jsonl").read_text().splitlines()]
    assert len([x for x in runs if x["kind"] == "finetune"]) == 4
    assert all(0 <= x["mean_dice"] <= 1 for x in runs if x["kind"] == "finetune")
    st = subprocess.run([sys.executable, "-m", "experiments", "status", "--config", str(cfg)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert "5 done" in st.stdout, st.stdout
