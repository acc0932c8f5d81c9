"""Where a run ran and from which code: git commit and dirty flag, host, CPU, package versions."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# Packages whose versions change the numbers of a run (kernels, augmentations, model code).
NUMERIC_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "opencv-python-headless", "albumentations",
                    "albucore", "timm", "lightly")


# Outputs of the project's own commands: a change there (say, results/quick written by the grid
# before results/lowlabel runs) leaves the code as committed, so it does not make a run "dirty".
OUTPUTS = ("results",)


def git_info(repo: Path = REPO) -> dict:
    """Commit hash and whether tracked files outside ``OUTPUTS`` have uncommitted changes (``None`` outside git)."""
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD") or None
        exclude = [f":(exclude){p}" for p in OUTPUTS]
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", *exclude)) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict:
    versions = {}
    for name in NUMERIC_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict:
    """Where a run ran: host, CPU model and count, Python, the numeric packages' versions, GPU."""
    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "packages": package_versions()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance() -> dict:
    """Commit, dirty flag, machine and command line of this process."""
    return {**git_info(), "machine": machine_info(), "argv": sys.argv}
