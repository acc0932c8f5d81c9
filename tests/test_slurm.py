"""A real single-node SLURM cluster (slurm/local-cluster.sh): submit through `python -m slurm` and
`python -m experiments --executor slurm` (submitit + sbatch), let a job run into its time limit and
check that it saves, requeues and resumes to the same encoder. The cluster is stopped even when a
test fails. Profiles and the distributed environment are checked without the cluster.

No wait assumes a speed: a wait fails only when nothing has moved (job state, log lines, files)
for STALL seconds, and the time-limited job waits after a step (``--wait-at-step``) until SLURM's
warning comes, so the warning always lands while it trains, however fast or busy the machine is.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import write_config
from slurm import collector_profile, load_profile, pretrain_world_size
from slurm.profiles import slurm_parameters

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "local-cluster.sh"
STATE = "/tmp/ssl-medseg-slurm"
PROFILE = ROOT / "slurm" / "profiles" / "local-test.yaml"
STALL = 600  # seconds without any progress before a wait gives up

needs_cluster = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("apt-get"),
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


@needs_cluster
def test_a_job_past_its_time_limit_saves_requeues_and_resumes_to_the_same_encoder(slurm_cluster, finetune_job, tmp_path,
                                                                                   split):
    """A 1-minute time limit with the warning (USR2) 10 s before it: slurmctld checks limits every 30 s and
    sends the warning up to 30 s early, so it comes 20 to 50 s after the start. The run waits after step 5
    until a stop signal comes (``--wait-at-step``), so the warning lands while it trains; it stops after the
    step in flight, saves, and submitit requeues it (as often as it takes: on a busy machine the warning may
    come before step 5); each attempt resumes exactly where the last one stopped (nothing lost), and the
    final encoder equals an uninterrupted run's."""
    profile = tmp_path / "limited.yaml"
    profile.write_text(PROFILE.read_text() + "\ntime_min: 1\nsignal_delay_s: 10\nmax_requeues: 50\n")
    run = ["--task", "rotation", "--split", str(split), "--steps", "100", "--batch-size", "8", "--max-cases", "4",
           "--ckpt-every", "1000", "--log-every", "1", "--device", "cpu"]
    out, ref = tmp_path / "limited", tmp_path / "ref"
    r = subprocess.run([sys.executable, "-m", "slurm", "submit", "pretrain", "--profile", str(profile), *run,
                        "--wait-at-step", "5", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = re.search(r"submitted pretrain job (\d+)", r.stdout).group(1)
    done = subprocess.run([sys.executable, "-m", "pretrain", *run, "--out", str(ref)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # the uninterrupted run, on this machine meanwhile
    assert done.returncode == 0, done.stderr[-2000:]

    pending_since = []

    def finished():
        # A requeued job is held ~2 min (Reason=BeginTime); start it sooner, but not within the second of its
        # requeue: slurmd revokes the old attempt's credential with a timestamp in seconds, and an attempt
        # started in that same second is killed ("Job credential revoked"). Later is always safe.
        state, done = squeue_state(job_id), (out / "summary.json").is_file()
        if state == "PENDING":
            pending_since[:] = pending_since or [time.time()]
            if time.time() - pending_since[0] >= 3:
                release_hold(job_id)
        else:
            pending_since.clear()
        if state is None and not done:
            logs = "".join(p.read_text() for p in sorted((out / "slurm").glob("*_log.*")))
            raise AssertionError(f"job {job_id} left the queue unfinished:\n{logs[-3000:]}")
        return done
    moving = lambda: (squeue_state(job_id), snapshot(out))  # noqa: E731
    wait_for(finished, "the time-limited job to finish", moving)
    wait_for(lambda: squeue_state(job_id) is None, "the job to leave the queue", moving)

    log = (out / "slurm" / f"{job_id}_0_log.out").read_text()  # every attempt (the profile appends)
    stops = [int(s) for s in re.findall(r"stopped \(SIGUSR2\) at step (\d+)/100", log)]
    resumes = [int(s) for s in re.findall(r"resuming from \S+ at step (\d+)/100", log)]
    assert stops and resumes == stops, (stops, resumes, log[-3000:])  # requeued, and not a step lost
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 101))
    a = torch.load(ref / "encoder.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "encoder.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finetune_job(slurm_cluster, tmp_path_factory, split):
    """A fine-tuning job submitted through ``python -m slurm submit``; the time-limit test asks for it too, so it
    runs on the cluster's other CPU while that test's job sleeps through its steps."""
    out = tmp_path_factory.mktemp("ft") / "ft"
    r = subprocess.run([sys.executable, "-m", "slurm", "submit", "finetune", "--profile", str(PROFILE), "--arch", "unet",
                        "--encoder", "unet_tiny", "--fraction", "1.0", "--split", str(split), "--steps", "3",
                        "--batch-size", "8", "--max-test-cases", "2", "--device", "cpu", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return re.search(r"submitted finetune job (\d+)", r.stdout).group(1), out


@needs_cluster
def test_slurm_submit_finetune(finetune_job, tmp_path, split):
    job_id, out = finetune_job
    wait_for(lambda: squeue_state(job_id) is None, "the fine-tuning job", lambda: (squeue_state(job_id), snapshot(out)))
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "done" and m["steps"] == 3 and len(m["cases"]) == 2
    bad = subprocess.run([sys.executable, "-m", "slurm", "submit", "finetune", "--profile", str(PROFILE), "--arch", "unet",
                          "--fraction", "1.0", "--split", str(split), "--out", str(tmp_path / "x"), "--steps", "-1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --steps must be >= 0, got -1"


@needs_cluster
def test_slurm_grid_pretrain_finetune_collect(slurm_cluster, tmp_path, small_msd):
    cfg = write_config(tmp_path, small_msd, archs=["unet"])
    r = subprocess.run([sys.executable, "-m", "experiments", "reproduce", "--config", str(cfg), "--executor", "slurm",
                        "--profile", str(PROFILE)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "afterok:" in r.stdout and "afterany:" in r.stdout
    registry = json.loads((tmp_path / "runs" / "tiny" / "slurm_jobs.json").read_text())
    assert len(registry) == 1 + 4 + 1  # pretrain, 4 fine-tuning cells, collector
    limits = {key: subprocess.run(["scontrol", "show", "job", entry["job_id"]], capture_output=True, text=True).stdout
              for key, entry in registry.items()}
    # the config's timeout_min (10) is every training job's limit, not the profile's time_min (30)
    assert "TimeLimit=00:10:00" in limits["pretrain/simclr/P0"], limits["pretrain/simclr/P0"]
    assert all("TimeLimit=00:10:00" in text for key, text in limits.items() if key != "collect" and text), limits
    collect_id = registry["collect"]["job_id"]
    wait_for(lambda: squeue_state(collect_id) is None, "the collector job",
             lambda: (subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout, snapshot(tmp_path / "runs")))
    res = tmp_path / "results" / "tiny"
    assert (res / "table.csv").is_file(), Path(registry["collect"]["stderr"]).read_text()[-2000:]
    runs = [json.loads(l) for l in (res / "runs.jsonl").read_text().splitlines()]
    assert len([x for x in runs if x["kind"] == "finetune"]) == 4
    table = {(r["arch"], r["init"], float(r["fraction"])): r for r in csv.DictReader(open(res / "table.csv"))}
    for x in (x for x in runs if x["kind"] == "finetune" and x["init"] == "random" and x["fraction"] == 1.0):
        assert float(table[("unet", "random", 1.0)]["mean_dice"]) == pytest.approx(x["mean_dice"], abs=1e-4)
    st = subprocess.run([sys.executable, "-m", "experiments", "status", "--config", str(cfg)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert "5 done" in st.stdout, st.stdout


def test_profiles_time_limits_and_the_collectors_resources(tmp_path):
    prof = load_profile(ROOT / "slurm" / "profiles" / "example-gpu.yaml")
    assert slurm_parameters(prof)["timeout_min"] == 240 and slurm_parameters(prof, time_min=720)["timeout_min"] == 720
    collector = collector_profile(prof)  # a short CPU job on the same partition by default
    assert collector["gpus_per_node"] == 0 and collector["cpus_per_task"] == 1 and collector["partition"] == "gpu"
    p = tmp_path / "p.yaml"
    p.write_text("partition: gpu\ngpus_per_node: 4\ncollector: {gpus_per_node: 1, partition: gpu-small}\n")
    collector = collector_profile(load_profile(p))  # a partition that requires a GPU
    assert collector["gpus_per_node"] == 1 and collector["partition"] == "gpu-small" and "collector" not in collector
    assert slurm_parameters(collector)["gpus_per_node"] == 1 and pretrain_world_size(load_profile(p)) == 4
    for text, says in (("collector: {nodes: 2}\n", "collector is a mapping"), ("cpus_per_task: 0\n", "cpus_per_task must be")):
        p.write_text(text)
        with pytest.raises(ValueError, match=says):
            load_profile(p)


def test_the_ddp_export_replaces_what_the_site_set():
    """Inside a SLURM task whose environment already has MASTER_ADDR and RANK (a site prolog, a launching
    job), the job's own values are exported, and the job log says so."""
    env = {"PATH": os.environ["PATH"], "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "123", "SLURM_NTASKS": "2",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost", "SLURM_PROCID": "1",
           "SLURM_LOCALID": "1", "MASTER_ADDR": "elsewhere", "RANK": "7", "NO_ALBUMENTATIONS_UPDATE": "1"}
    code = "import os, slurm.jobs as j; j._distributed_env(); print(os.environ['MASTER_ADDR'], os.environ['RANK'], os.environ['WORLD_SIZE'])"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "localhost 1 2" and "MASTER_ADDR elsewhere -> localhost" in r.stdout


def test_a_run_for_another_machine_is_checked_without_its_device_here():
    """`slurm submit ... --device cuda` from a login node without a GPU: the node the job lands on has it."""
    import finetune
    from slurm import check_run_args
    args = finetune.get_args_parser().parse_args(["--arch", "unet", "--encoder", "unet_tiny", "--fraction", "1.0",
                                                  "--split", "s.json", "--out", "o", "--device", "cuda:3"])
    check_run_args("finetune", args)  # no CUDA needed here
    args.device = "tpu"
    with pytest.raises(ValueError, match="expected cpu, cuda, cuda:N or auto"):
        check_run_args("finetune", args)
