"""Package layering: every module of each package, imported in a fresh interpreter, loads none of the packages
above it (nor its sibling at the same level: scans and models, pretrain and finetune know nothing of each other).

    atomicio <- scans, models <- engine <- pretrain, finetune <- slurm <- experiments

So the trainers know nothing of SLURM or of the experiment grid: slurm and experiments sit above them.
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
EVERY_MODULE = """
import importlib, pkgutil, sys
package = importlib.import_module({p!r})
modules = [m.name for m in pkgutil.walk_packages(package.__path__, {p!r} + ".") if not m.name.endswith("__main__")]
for m in modules:
    importlib.import_module(m)
print(len(modules), " ".join(n for n in {ours!r} if n in sys.modules and n != {p!r}))
"""


def test_every_module_of_a_package_loads_only_the_packages_below_it():
    procs = {p: subprocess.Popen([sys.executable, "-c", EVERY_MODULE.format(p=p, ours=OURS)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for p in OURS}  # fresh interpreters, all at once
    bad, counted = [], {}
    for package, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        n, *loaded = out.split()
        counted[package] = int(n)
        if not set(loaded) <= MAY_LOAD[package]:
            bad.append(f"a module of {package} loads {sorted(set(loaded) - MAY_LOAD[package])}")
    assert not bad, bad
    assert counted["finetune"] >= 8 and counted["pretrain"] >= 8  # predict, export, inference, every task module ...
