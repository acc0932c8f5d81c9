"""Package layering: each package, imported alone in a fresh interpreter, loads none of the packages above it.

    atomicio <- scans, models <- engine <- pretrain, finetune <- slurm <- experiments
"""
import subprocess
import sys

OURS = ["atomicio", "scans", "models", "engine", "pretrain", "finetune", "slurm", "experiments"]
MAY_LOAD = {
    "atomicio": set(),
    "scans": {"atomicio"},
    "models": {"atomicio"},
    "engine": {"atomicio", "scans", "models"},
    "pretrain": {"atomicio", "scans", "models", "engine"},
    "finetune": {"atomicio", "scans", "models", "engine"},
    "slurm": {"atomicio", "scans", "models", "engine", "pretrain", "finetune"},
    "experiments": set(OURS) - {"experiments"},
}


def _python(*args):
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_each_package_loads_only_the_packages_below_it():
    procs = {p: _python("-c", f"import sys, {p}; print(' '.join(m for m in {OURS!r} if m in sys.modules and m != {p!r}))")
             for p in OURS}  # fresh interpreters, all at once
    bad = []
    for package, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        loaded = set(out.split())
        if not loaded <= MAY_LOAD[package]:
            bad.append(f"import {package} loads {sorted(loaded - MAY_LOAD[package])}")
    assert not bad, bad


def test_trainers_know_nothing_of_slurm():
    procs = [_python("-m", trainer, "--help") for trainer in ("pretrain", "finetune")]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "slurm submit" in out and "--slurm" not in out
