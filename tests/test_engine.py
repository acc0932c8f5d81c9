"""engine: atomic writes, LR schedule, sampler, log trimming, run identity, one writer per run folder, the loop."""
import json
import os
import signal
import subprocess

import pytest
import torch

import engine
from atomicio import atomic_path, write_json, write_text
from helpers import hold_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- atomic writes

def test_atomic_path_replaces_only_on_success(tmp_path):
    p = tmp_path / "sub" / "a.json"
    write_json(p, {"b": 1, "a": [1, 2]})
    assert p.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(p.read_text()) == {"a": [1, 2], "b": 1}
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.json"]  # no temporary file left
    write_text(p, "new")
    assert p.read_text() == "new"


# ---------------------------------------------------------------- schedule and sampler

def test_lr_schedule_warmup_then_cosine():
    lrs = [engine.lr_at(s, 100, 1.0, 10) for s in range(101)]
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.3]) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5) and lrs[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warm-up
    assert engine.lr_at(100, 100, 1.0, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_sampler_gives_the_keys_of_a_whole_run_sharded_and_resumable_mid_epoch():
    n, bs = 103, 5
    shards = [engine.ResumableSampler(n, bs, seed=3, rank=r, world=3) for r in range(3)]
    per = shards[0].batches_per_epoch
    assert per == (n // 3) // bs
    keys = [list(s.set_range(0, 2 * per)) for s in shards]
    assert all(len(k) == len(s) == 2 * per * bs for k, s in zip(keys, shards))
    for epoch in (0, 1):
        mine = [i for k in keys for e, i in k if e == epoch]
        assert len(set(mine)) == len(mine)  # within an epoch no index is on two ranks
    one = engine.ResumableSampler(n, bs, seed=3)
    per = one.batches_per_epoch
    full = list(one.set_range(0, 3 * per))  # three epochs from one iterator
    assert [e for e, _ in full] == [e for e in range(3) for _ in range(per * bs)]
    assert list(one.set_range(per + 4, 3 * per)) == full[(per + 4) * bs:]  # resume mid-epoch: the same keys
    assert len(one) == (2 * per - 4) * bs
    order = {e: [i for k, i in full if k == e] for e in range(3)}
    assert order[1] != order[2]  # another epoch, another order
    assert list(engine.ResumableSampler(n, bs, seed=3).set_range(0, 3 * per)) == full  # depends only on (seed, epoch)
    with pytest.raises(ValueError, match="no full batch"):
        engine.ResumableSampler(4, 5)


def test_jsonl_log_drops_rows_past_the_resume_step(tmp_path):
    log = engine.JsonlLog(tmp_path / "log.jsonl")
    for s in range(1, 8):
        log.write(step=s, loss=1.0 / s)
    resumed = engine.JsonlLog(tmp_path / "log.jsonl", resume_step=4)
    assert [r["step"] for r in resumed.rows()] == [1, 2, 3, 4]
    resumed.write(step=5, loss=0.0)
    assert [r["step"] for r in resumed.rows()] == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------- identity

def test_identity_leaves_out_only_reporting_options_and_hashes_files(tmp_path):
    split = tmp_path / "s.json"
    split.write_text("{}")
    args = {"lr": 0.1, "out": "x", "workers": 4, "log_every": 3, "size": (48, 64), "split": str(split), "task": "t"}
    ident = engine.run_identity(args, files={"split": split}, leave_out={"task"})
    assert ident == {"lr": 0.1, "size": [48, 64], "split": str(split),
                     "split_sha256": engine.file_digest(split)}
    split.write_text("{ }")
    assert engine.identity_diff(ident, engine.run_identity(args, files={"split": split}, leave_out={"task"})) == [
        f"content of --split {ident['split_sha256'][:12]}... -> {engine.file_digest(split)[:12]}..."]
    assert engine.identity_diff({"lr": 0.1}, {"lr": 0.2, "max_cases": 1}) == ["--lr 0.1 -> 0.2", "--max-cases None -> 1"]


def test_every_reporting_option_is_outside_the_identity_and_the_device_enters_as_its_type():
    reporting = [a.dest for a in engine.runtime_parser()._actions if a.dest not in ("out", "device", "amp")]
    assert reporting and set(reporting) == set(engine.NOT_IDENTITY) - {"out"}
    ident = engine.run_identity({"device": "cuda:3", "lr": 0.1, "note": "x"}, not_identity={"note": "why"}, world_size=2)
    assert ident == {"device": "cuda", "lr": 0.1, "world_size": 2}
    assert engine.identity_diff(ident, {**ident, "world_size": 1}) == ["world size (processes) 2 -> 1"]


# ---------------------------------------------------------------- run folder: one writer, identity



def test_second_process_is_refused_with_the_holders_pid_and_kill_9_frees_the_folder(tmp_path):
    run = tmp_path / "run"
    holder = hold_folder(run)
    try:
        assert engine.lock_holder(run) == holder.pid
        with pytest.raises(engine.RunBusy, match=f"in use by process {holder.pid}"):
            engine.RunFolder(run, {"lr": 0.1}, "result.json").claim()
        assert engine.RunFolder(run, {"lr": 0.1}, "result.json").state() == "running"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert engine.lock_holder(run) is None  # the OS dropped the lock with the process
    with engine.RunFolder(run, {"lr": 0.1}, "result.json") as folder:
        assert engine.lock_holder(run) == os.getpid() and folder.state() == "running"


def test_other_identity_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    with engine.RunFolder(run, {"lr": 0.1, "seed": 0}, "result.json") as folder:
        folder.write_config(args={})
        folder.write_result({"status": "done"})
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other = engine.RunFolder(run, {"lr": 0.2, "seed": 0}, "result.json")
    assert other.state() == "other"
    with pytest.raises(engine.RunMismatch, match=r"other settings \(--lr 0.1 -> 0.2\)"):
        other.claim()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert engine.RunFolder(run, {"lr": 0.1, "seed": 0}, "result.json").state() == "done"


# ---------------------------------------------------------------- the loop

class Toy(engine.Trainer):
    """Linear regression on fixed random data, batches through the resumable sampler."""

    def __init__(self, model, per_epoch=5, bs=4, nan_at=None):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(per_epoch * bs, 3, generator=g), torch.randn(per_epoch * bs, 1, generator=g)
        self.model, self.sampler, self.bs, self.nan_at, self.step = model, engine.ResumableSampler(len(self.x), bs), bs, nan_at, 0
        self.evaluated = []

    def batches(self, start, total):
        idx = [i for _, i in self.sampler.set_range(start, total)]
        return [(self.x[idx[i:i + self.bs]], self.y[idx[i:i + self.bs]]) for i in range(0, len(idx), self.bs)]

    def forward(self, batch):
        x, y = batch
        loss = ((self.model(x) + 0.01 * torch.randn(len(x), 1) - y) ** 2).mean()  # uses the global RNG
        self.step += 1
        return {"loss": loss * (float("nan") if self.step == self.nan_at else 1.0)}

    def evaluate(self, step):
        if step % 7:
            return {}
        self.evaluated.append(step)
        return {"val": 1.0}


def _fit(path, total=23, stop_at_step=0, **kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    state = engine.TrainState(model, opt, torch.amp.GradScaler("cuda", enabled=False))
    folder = engine.RunFolder(path, {"x": 1}, "r.json").claim()
    log = engine.resume(folder, state)
    trainer = Toy(model, **kw)
    s = engine.LoopSettings(total=total, per_epoch=5, lr=0.1, warmup=2, images_per_step=4, log_every=3,
                            ckpt_every=4, stop_at_step=stop_at_step)
    try:
        done = engine.fit(folder, state, trainer, torch.device("cpu"), s, log) is None
    finally:
        folder.release()
    return done, state, log, trainer


def test_fit_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    done, ref, ref_log, trainer = _fit(tmp_path / "a")
    assert done and ref.step == 23 and trainer.evaluated == [7, 14, 21]
    assert [r["step"] for r in ref_log.rows()] == [3, 6, 7, 9, 12, 14, 15, 18, 21, 23]
    assert all("val" in r for r in ref_log.rows() if r["step"] in (7, 14, 21))
    done, part, _, _ = _fit(tmp_path / "b", stop_at_step=11)
    assert not done and part.step == 11
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 11
    done, resumed, log, _ = _fit(tmp_path / "b")
    assert done and resumed.step == 23
    assert [r["step"] for r in log.rows()] == [r["step"] for r in ref_log.rows()]  # each step logged once
    for k, v in ref.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k  # bit-identical to the uninterrupted run


def test_fit_stops_on_a_nan_loss(tmp_path):
    with pytest.raises(FloatingPointError, match=r"loss is not finite at step 6 \(here nan\)"):
        _fit(tmp_path / "n", nan_at=6)


def test_progress_off_a_terminal_prints_step_rate_and_time_left(capsys):
    p = engine.Progress(10, desc="train", every_s=0)
    p.tty = False
    p.update(5, loss=0.25)
    p.close()
    line = capsys.readouterr().out.strip()
    assert line.startswith("train: step 5/10, loss 0.25, ") and "steps/s" in line and "left" in line


def test_dirty_means_code_changed_not_results(tmp_path):
    from engine.provenance import git_info

    def git(*cmd):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("old\n")
    (tmp_path / "train.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "results" / "table.md").write_text("new\n")  # an output of the project's commands
    (tmp_path / "untracked.txt").write_text("scratch\n")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "train.py").write_text("x = 2\n")
    assert git_info(tmp_path)["dirty"] is True


def test_a_signal_stops_the_loop_after_the_step_and_the_resumed_run_is_the_same(tmp_path):
    """Each of SIGTERM, SIGUSR1, SIGUSR2 (SLURM's time-limit warning) and SIGINT sent during step 9 stops the
    run after step 9 with a checkpoint there; the resumed run ends bit-identical to an uninterrupted one."""
    _, ref, _, _ = _fit(tmp_path / "ref")
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        out = tmp_path / sig.name

        class Signalled(Toy):
            def forward(self, batch):
                if self.step == 8:  # the 9th step
                    os.kill(os.getpid(), sig)
                return super().forward(batch)
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        state = engine.TrainState(model, torch.optim.AdamW(model.parameters(), lr=0.1),
                                  torch.amp.GradScaler("cuda", enabled=False))
        folder = engine.RunFolder(out, {"x": 1}, "r.json").claim()
        s = engine.LoopSettings(total=23, per_epoch=5, lr=0.1, warmup=2, images_per_step=4, log_every=3, ckpt_every=4)
        try:
            stopped = engine.fit(folder, state, Signalled(model), torch.device("cpu"), s, engine.resume(folder, state))
        finally:
            folder.release()
        assert stopped == sig.name and state.step == 9
        assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 9
        assert signal.getsignal(sig) is not None and not isinstance(signal.getsignal(sig), engine.StopSignal)
        done, resumed, _, _ = _fit(out)
        assert done and all(torch.equal(resumed.model.state_dict()[k], v) for k, v in ref.model.state_dict().items())


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    engine.seed_everything(5)
    state = engine.capture_rng()
    torch.save({"rng": [state]}, tmp_path / "c.pt")
    want = (torch.rand(3), np.random.rand(3), random.random())
    engine.seed_everything(6)
    engine.restore_rng(torch.load(tmp_path / "c.pt", weights_only=True)["rng"][0])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


def test_a_crafted_checkpoint_runs_no_code_and_is_refused_in_one_line(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "step": 1, "payload": Payload()}, run / "checkpoint.pt")
    with pytest.raises(engine.ConfigError) as e:
        engine.RunFolder(run, {"x": 1}, "r.json").load_checkpoint()
    assert not (tmp_path / "pwned").exists()
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "checkpoint.pt" in msg and "weights_only" not in msg, msg
    (run / "checkpoint.pt").write_bytes(b"not a torch file")
    with pytest.raises(engine.ConfigError, match="cannot read this checkpoint"):
        engine.RunFolder(run, {"x": 1}, "r.json").load_checkpoint()


def test_a_refused_run_leaves_no_folder_and_out_may_not_be_a_file(tmp_path):
    new = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with engine.RunFolder(new, {"x": 1}, "r.json"):
            raise RuntimeError("refused after the claim")
    assert not new.exists()  # created by this process, nothing written: removed again
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError):
        with engine.RunFolder(kept, {"x": 1}, "r.json"):
            raise RuntimeError("refused")
    assert kept.is_dir()  # it was there before
    (tmp_path / "file").write_text("x")
    with pytest.raises(engine.ConfigError, match="is a file"):
        engine.RunFolder(tmp_path / "file", {"x": 1}, "r.json").claim()


def test_a_device_the_machine_lacks_is_refused():
    with pytest.raises(engine.ConfigError, match="cuda:99"):
        engine.resolve_device("cuda:99")
    with pytest.raises(engine.ConfigError, match="expected cpu, cuda"):
        engine.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(engine.ConfigError, match="no CUDA device"):
            engine.resolve_device("cuda")
    assert engine.resolve_device("cpu").type == "cpu" and engine.device_type("cuda:1") == "cuda"


def test_a_signal_during_the_final_save_reaches_the_handler_there_before(tmp_path, monkeypatch):
    """The run ends (all steps done) and the signal, too late to stop a step, is handed to whoever handled it
    before the loop (submitit's requeue on SLURM); the stronger of two reasons wins (USR2 over TERM)."""
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: seen.append(sig))
    try:
        save = engine.RunFolder.save_checkpoint

        def save_then_signal(self, state):
            save(self, state)
            if state["step"] == 23:
                os.kill(os.getpid(), signal.SIGUSR1)
        monkeypatch.setattr(engine.RunFolder, "save_checkpoint", save_then_signal)
        done, state, _, _ = _fit(tmp_path / "run")
        assert done and state.step == 23 and seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
    stop = engine.StopSignal()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert engine.stop_reason(stop.received) == "SIGUSR2"
    finally:
        stop.close()
