import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# One intra-op thread for torch here and in every process a test starts: the suite's tensors are tiny, and on a
# machine whose other cores are busy a second OpenMP thread waits for a core and makes each step many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "msd_hippocampus"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture
def small_msd(tmp_path) -> Path:
    """An MSD-layout copy of the first 6 embedded cases (symlinks, no dataset.json)."""
    root = tmp_path / "msd_small"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for f in sorted((DATA / sub).glob("*.nii.gz"))[:6]:
            (root / sub / f.name).symlink_to(f)
    return root
