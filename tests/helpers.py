"""Shared test helpers: a changed value for every result-affecting argument, a folder fingerprint, a process
that holds a run folder's lock, free ports for torchrun, a DICOM series writer, a slow NT-Xent reference and a
tiny experiment config."""
from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]


def changed_value(action, other_file: Path) -> list[str]:
    """Command-line words that give ``action`` (an argparse action) a valid value other than its default."""
    flag = action.option_strings[0]
    if action.nargs == 0:  # store_true
        return [flag]
    if action.choices:
        return [flag, next(str(c) for c in action.choices if c != action.default)]
    default = action.default
    if action.nargs in (2, "+"):
        values = default or [1.0, 2.0, 3.0][: action.nargs if isinstance(action.nargs, int) else 3]
        return [flag, *(str(v + 16) if isinstance(v, int) else str(v * 2) for v in values)]
    if action.type is int:
        return [flag, str((default or 0) + 1)]
    if action.type is float:
        return [flag, str(round((default or 0.25) * 0.5, 6))]
    if action.dest in ("split", "imagenet_weights"):
        return [flag, str(other_file)]
    if action.dest == "init":
        return [flag, "imagenet"]
    if action.dest == "encoder":
        return [flag, "unet_small"]
    return [flag, f"{default}-other"]


def identity_actions(parser, identity: dict) -> list:
    """The parser's actions that are part of a run identity (one per identity argument)."""
    return [a for a in parser._actions if a.dest in identity and a.option_strings]


def fingerprint(folder: Path) -> dict:
    """name -> (sha256, mtime_ns) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def refused_names(err: str, action) -> bool:
    """The refusal's one line names the argument (as a flag or as ``content of`` the flag)."""
    return len(err.strip().splitlines()) == 1 and action.option_strings[0] in err



# A process that takes a run folder's lock as a trainer does (engine.FolderLock, which RunFolder.claim holds),
# then keeps it.
HOLD = textwrap.dedent("""
    import sys, time, engine
    lock = engine.FolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def hold_folder(path) -> subprocess.Popen:
    """Start a process holding ``path``'s lock; returns once it holds it, however slow the machine."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, *args) -> list[str]:
    """A torchrun command line with ``nproc`` processes on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), *args]


def write_dicom_series(folder, volume, series_uid=None, slope=2.0, intercept=-100.0, spacing=(0.5, 0.7), gap=3.0):
    """A 16-bit DICOM series of ``volume`` (rows, cols, slices), files written in shuffled order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    n = volume.shape[2]
    for k in np.random.default_rng(0).permutation(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series_uid, generate_uid(), "CT"
        ds.Rows, ds.Columns = volume.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelSpacing = list(spacing)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k * gap)]
        ds.InstanceNumber = int(n - k)  # deliberately disagrees with position: position wins
        ds.PixelData = volume[:, :, k].astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"slice{k:03d}.dcm"), enforce_file_format=True)


# ---------------------------------------------------------------- readers


def reference_ntxent(z0, z1, t, rows=None):
    """Slow, obviously-correct NT-Xent over a global batch; mean over ``rows`` of the 2N rows."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    n = len(z0)
    losses = []
    for i in range(2 * n):
        pos = i + n if i < n else i - n
        sims = torch.stack([z[i] @ z[k] / t for k in range(2 * n) if k != i])
        losses.append(-(z[i] @ z[pos] / t) + torch.logsumexp(sims, 0))
    losses = torch.stack(losses)
    return losses.mean() if rows is None else losses[rows].mean()


def write_config(tmp_path, data, file: str = "tiny.yaml", **over):
    cfg = {
        "data": str(data), "split": {"test_fraction": 0.34, "seed": 0},
        "encoder": "unet_tiny", "tasks": ["simclr"], "inits": ["random", "simclr"],
        "archs": ["unet", "transunet"], "fractions": [0.5, 1.0], "label_seeds": [0], "train_seeds": [0], "device": "cpu",
        "runs_dir": str(tmp_path / "runs" / "tiny"), "results_dir": str(tmp_path / "results" / "tiny"),
        "cpus_per_job": 1, "timeout_min": 10,
        "pretrain": {"epochs": 1, "batch_size": 8, "args": {"steps": 2}},
        "finetune": {"steps": {0.5: 2, 1.0: 3}, "batch_size": 8, "args": {"max_test_cases": 2, "eval_every": 1}},
        "embeddings": {"slices": 16},
        **over,
    }
    path = tmp_path / file
    path.write_text(yaml.safe_dump(cfg))
    return path
