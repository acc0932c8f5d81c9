"""A real single-node SLURM cluster (slurm/local-cluster.sh): submit through `python -m slurm` and
`python -m experiments --executor slurm` (submitit + sbatch), requeue a running job and check it
resumes. The cluster is stopped even when a test fails.

No wait assumes a speed: a wait fails only when nothing has moved (job state, log lines, files)
for STALL seconds, and the requeued job sleeps 0.2 s per step, so the requeue always lands while
it runs, however fast or busy the machine is.
"""
import json
import os
import re
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
STALL = 600  # seconds without any progress before a wait gives up

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("apt-get"),
                                reason="the local SLURM cluster needs root and apt-get")


@pytest.fixture(scope="module")
def slurm_cluster():
    env = {**os.environ, "SLURM_LOCAL_DIR": STATE}
    try:
        up = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        os.environ["SLURM_CONF"] = f"{STATE}/slurm.conf"
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=300)
        os.environ.pop("SLURM_CONF", None)


def squeue_state(job_id):
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return out or None


def snapshot(*paths):
    """Something that changes whenever a run moves: sizes of its files."""
    return tuple(sorted((str(p), p.stat().st_size) for d in paths for p in Path(d).rglob("*") if p.is_file()))


def wait_for(cond, what, progress):
    """Poll ``cond`` every second; fail when ``progress()`` has not changed for STALL seconds."""
    last, since = progress(), time.time()
    while not cond():
        now = progress()
        if now != last:
            last, since = now, time.time()
        elif time.time() - since > STALL:
            raise AssertionError(f"no progress for {STALL} s while waiting for {what}")
        time.sleep(1)


def release_hold(job_id):
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)


@pytest.fixture(scope="module")
def split(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("split") / "splits.json"
    subprocess.run([sys.executable, "-m", "scans", "split", str(data_dir), "--fractions", "1.0", "--out", str(path)],
                   check=True, capture_output=True)
    return path


def test_slurm_requeue_resumes_pretraining_at_a_checkpoint(slurm_cluster, tmp_path, split):
    out, total = tmp_path / "pre", 150
    r = subprocess.run([sys.executable, "-m", "slurm", "submit", "pretrain", "--profile", str(PROFILE),
                        "--task", "rotation", "--split", str(split), "--out", str(out), "--steps", str(total),
                        "--batch-size", "8", "--max-cases", "4", "--ckpt-every", "10", "--log-every", "1",
                        "--sleep-per-step", "0.2", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = re.search(r"submitted pretrain job (\d+)", r.stdout).group(1)
    job_log = out / "slurm" / f"{job_id}_0_log.out"
    moving = lambda: (squeue_state(job_id), snapshot(out))  # noqa: E731
    wait_for(lambda: "checkpoint at step" in (job_log.read_text() if job_log.is_file() else ""),
             "the first checkpoint", moving)
    subprocess.run(["scontrol", "requeue", job_id], check=True)

    def finished():
        if squeue_state(job_id) == "PENDING":
            release_hold(job_id)  # a requeued job is held ~2 min (Reason=BeginTime); start it now
        return (out / "summary.json").is_file()
    wait_for(finished, "the requeued job to finish", moving)
    wait_for(lambda: squeue_state(job_id) is None, "the job to leave the queue", moving)

    assert json.loads((out / "summary.json").read_text())["step"] == total
    log = job_log.read_text()  # both attempts (the profile appends)
    first, second = log.split("resuming from", 1)
    saved = {int(s) for s in re.findall(r"checkpoint at step (\d+)/", first)}
    resumed = int(re.match(rf" {out / 'checkpoint.pt'} at step (\d+)/{total}", second).group(1))
    assert resumed > 0 and resumed in saved, (resumed, sorted(saved))  # continued from a checkpoint it wrote
    steps = [json.loads(l)["step"] for l in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # every step logged exactly once


def test_slurm_submit_finetune(slurm_cluster, tmp_path, split):
    out = tmp_path / "ft"
    r = subprocess.run([sys.executable, "-m", "slurm", "submit", "finetune", "--profile", str(PROFILE), "--arch", "unet",
                        "--encoder", "unet_tiny", "--fraction", "1.0", "--split", str(split), "--steps", "3",
                        "--batch-size", "8", "--max-test-cases", "2", "--device", "cpu", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = re.search(r"submitted finetune job (\d+)", r.stdout).group(1)
    wait_for(lambda: squeue_state(job_id) is None, "the fine-tuning job", lambda: (squeue_state(job_id), snapshot(out)))
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "done" and m["steps"] == 3 and len(m["cases"]) == 2
    bad = subprocess.run([sys.executable, "-m", "slurm", "submit", "finetune", "--profile", str(PROFILE), "--arch", "unet",
                          "--fraction", "1.0", "--split", str(split), "--out", str(tmp_path / "x"), "--steps", "-1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --steps must be >= 0, got -1"


def test_slurm_grid_pretrain_finetune_collect(slurm_cluster, tmp_path, small_msd):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_experiments import write_config
    cfg = write_config(tmp_path, small_msd, archs=["unet"])
    r = subprocess.run([sys.executable, "-m", "experiments", "reproduce", "--config", str(cfg), "--executor", "slurm",
                        "--profile", str(PROFILE)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "afterok:" in r.stdout and "afterany:" in r.stdout
    registry = json.loads((tmp_path / "runs" / "tiny" / "slurm_jobs.json").read_text())
    assert len(registry) == 1 + 4 + 1  # pretrain, 4 fine-tuning cells, collector
    collect_id = registry["collect"]["job_id"]
    wait_for(lambda: squeue_state(collect_id) is None, "the collector job",
             lambda: (subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout, snapshot(tmp_path / "runs")))
    res = tmp_path / "results" / "tiny"
    assert (res / "table.csv").is_file(), Path(registry["collect"]["stderr"]).read_text()[-2000:]
    runs = [json.loads(l) for l in (res / "runs.jsonl").read_text().splitlines()]
    assert len([x for x in runs if x["kind"] == "finetune"]) == 4
    assert all(0 <= x["mean_dice"] <= 1 for x in runs if x["kind"] == "finetune")
    st = subprocess.run([sys.executable, "-m", "experiments", "status", "--config", str(cfg)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert "5 done" in st.stdout, st.stdout
