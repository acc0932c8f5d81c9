"""Package layering: every module of each package (``__main__`` ones too), imported alone in an interpreter that
holds none of ours, loads none of the packages above it (nor its sibling at the same level: scans and models, pretrain and finetune know nothing of each other).

    atomicio <- scans, models <- engine <- pretrain, finetune <- slurm <- experiments

So the trainers know nothing of SLURM or of the experiment grid: slurm and experiments sit above them.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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
# Third-party libraries are loaded once, then each module is imported alone in a child forked from that process
# (what counts is which of OUR packages a module loads; forking saves each child the seconds torch takes to load).
EACH_MODULE_ALONE = """
import importlib, json, os, sys
from pathlib import Path
for lib in ("numpy", "torch", "torchvision", "timm", "lightly", "albumentations", "cv2", "scipy", "submitit", "tqdm",
            "yaml", "nibabel", "pydicom", "torch.utils.tensorboard"):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
assert not set(sys.modules) & set({ours!r})
for package in {ours!r}:
    for path in sorted(Path(package).rglob("*.py")):
        module = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                importlib.import_module(module)
                loaded = sorted(n for n in {ours!r} if n in sys.modules and n != package)
                os.write(write, json.dumps([package, module, loaded]).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            text = f.read()
        os.waitpid(pid, 0)
        print(text if text else json.dumps([package, module, None]), flush=True)
"""


def test_every_module_of_a_package_loads_only_the_packages_below_it():
    r = subprocess.run([sys.executable, "-c", EACH_MODULE_ALONE.format(ours=OURS)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    failed = [module for _, module, loaded in rows if loaded is None]
    assert not failed, f"these modules fail to import alone: {failed}"
    bad = [f"{module} loads {sorted(set(loaded) - MAY_LOAD[package])}" for package, module, loaded in rows
           if not set(loaded) <= MAY_LOAD[package]]
    assert not bad, bad
    counted = {p: sum(row[0] == p for row in rows) for p in OURS}
    names = {module for _, module, _ in rows}
    assert {"finetune.predict", "finetune.export", "finetune.__main__", "pretrain.tasks.restore",
            "experiments.collect"} <= names  # every module, the __main__ ones too
    assert counted["finetune"] >= 8 and counted["pretrain"] >= 8, counted
