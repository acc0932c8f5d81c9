"""Segment new scans with a fine-tuned run and write the segmentations in each scan's own geometry.

    python -m finetune.predict --run runs/ft/unet_rotation_10 --input scan.nii.gz --out preds/
    python -m finetune.predict --run RUN_DIR --input data/mine/imagesTs --out preds/ --tta --probabilities
    python -m finetune.predict --run RUN_DIR --input dicom_series_folder/ --out preds/

``--input`` is a scan (NIfTI, PNG/TIFF, .npy, a DICOM file) or a folder: a folder of DICOM files
is one series; any other folder is every scan in it (files with a known extension, and
subfolders holding a DICOM series). Each scan is normalised as the run normalised its training
scans, predicted slice by slice along the run's slice axis exactly as the run's evaluation
predicts (whole slices, centre-padded to at least the training size), and written by
``scans.write_segmentation`` (with ``--spacing``, predicted at the run's spacing and resampled back
to the scan's grid): NIfTI in -> ``OUT/CASE.nii.gz`` with the input's shape, affine and
header; DICOM in -> NIfTI with the series' geometry; PNG/TIFF in -> PNG (TIFF for a stack).
For a test case of the run, the output is the prediction its evaluation scored.
The test-time options are the run's own (``model.pt`` records whether its evaluation averaged in
the flips it trained with, ``tta``, and used mixed precision, ``amp``); ``--tta`` / ``--no-tta`` and
``--amp`` / ``--no-amp`` override them. ``--probabilities`` also writes the softmax maps.

Nothing is written over: ``--out`` may not be (or lie inside) the input folder, a dataset folder
(one with ``imagesTr``/``labelsTr``/``dataset.json``) or the run folder; two inputs that would give
the same output name are refused before anything is written; one process writes into an ``--out``
at a time, and an ``--out`` already holding another model's (or other options') predictions is
refused (``OUT/predict.json`` says which run made them). Voxels that are not finite (NaN, inf) are
replaced by the scan's lowest finite value before normalisation, with a warning. A scan that
cannot be read stops the command with one line naming it; files already written are complete.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

import engine
import scans
from atomicio import write_json

from .modelfile import load_model


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m finetune.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished fine-tuning run folder (holds model.pt)")
    p.add_argument("--input", required=True, help="a scan, a DICOM series folder, or a folder of scans")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average in the run's label-safe flips (default: as the run's evaluation did)")
    p.add_argument("--probabilities", action="store_true", help="also write the class probabilities")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision, CUDA float16 / CPU bfloat16 (default: as the run's evaluation did)")
    return p


def find_inputs(path) -> list[Path]:
    """The scans under ``path``: itself, or the scans and DICOM series folders directly in it."""
    p = Path(path)
    if not p.exists():
        raise scans.ScanError(p, "no such file or folder")
    if p.is_file():
        return [p]
    entries = sorted(e for e in p.iterdir() if not e.name.startswith("."))
    if any(e.is_file() and scans.io.is_dicom_file(e) for e in entries):
        return [p]  # a DICOM series
    found = [e for e in entries if e.is_file() and scans.io.extension(e) in scans.io.KNOWN_EXTS]
    found += [e for e in entries if e.is_dir() and any(f.is_file() and scans.io.is_dicom_file(f) for f in e.iterdir())]
    if not found:
        raise scans.ScanError(p, f"no scans found (files ending in {', '.join(scans.io.KNOWN_EXTS)} or DICOM series folders)")
    return found


class Predictor:
    """A run's segmenter with how its evaluation applied it: ``probabilities(volume)`` -> (C, X, Y, Z) float32.
    ``tta`` / ``amp``: None applies what the run's evaluation used (``model.pt``), True / False override it."""

    def __init__(self, run_dir, device="auto", tta: bool | None = None, amp: bool | None = None):
        self.device = engine.resolve_device(device)
        self.model, self.spec = load_model(run_dir, self.device)
        overrides = {k: v for k, v in (("tta", tta), ("amp", amp)) if v is not None}
        self.inference = self.spec["inference"].replace(**overrides)

    def probabilities(self, volume: scans.Volume):
        return self.inference.scan(self.model, volume, self.device)


MANIFEST = "predict.json"  # in --out: which run and test-time options made the predictions there


def check_out(out, inputs: list[Path], source, run_dir, probabilities: bool = False) -> None:
    """Refuse (ConfigError, one line) an ``--out`` that could write over an input, a dataset's files or the run,
    and inputs whose segmentations would get the same name."""
    out, source, run = Path(out).resolve(), Path(source).resolve(), Path(run_dir).resolve()
    if out.exists() and not out.is_dir():
        raise engine.ConfigError(f"--out {out} is a file; give a folder for the segmentations")
    if source.is_dir() and (out == source or source in out.parents):
        raise engine.ConfigError(f"--out {out} is inside the input folder {source}: segmentations would be written "
                                 "among (or over) the scans; use another --out")
    for p in inputs:
        if out in (p.resolve(), p.resolve().parent):
            raise engine.ConfigError(f"--out {out} holds the input {p}: a segmentation could be written over it; "
                                     "use another --out")
    root = scans.dataset_root(out)
    if root is not None:
        raise engine.ConfigError(f"--out {out} lies in the dataset folder {root} (imagesTr/, labelsTr/ or dataset.json): "
                                 "a segmentation could be written over its scans or labels; use a folder outside it")
    if out == run or run in out.parents:
        raise engine.ConfigError(f"--out {out} is inside the run folder {run}; use another --out")
    names: dict[str, Path] = {}
    for p in inputs:
        name = p.name if p.is_dir() else scans.discover.case_id_from_name(p.name)
        for n in (name, f"{name}_probabilities") if probabilities else (name,):
            if n in names:
                raise scans.ScanError(p, f"would give the same output name as {names[n]} ({n}.*): rename one of them "
                                         "or predict them into separate folders")
            names[n] = p


def claim_out(out, manifest: dict) -> tuple[engine.FolderLock, bool]:
    """Take ``--out``'s lock (RunBusy while another process writes there) and check or write its manifest:
    predictions of another run or with other test-time options, or files predict did not write, are refused.
    Returns the lock and whether the manifest is new."""
    lock = engine.FolderLock(out, "--out").acquire()
    try:
        path = Path(out) / MANIFEST
        old = engine.read_json(path)
        differs = [k for k in manifest if k != "run" and old is not None and old.get(k) != manifest[k]]  # the run may move
        if differs:
            diff = ", ".join(f"{k} {old.get(k)} -> {manifest[k]}" for k in differs)
            raise engine.ConfigError(f"--out {out} holds predictions of another model or with other options ({diff}); "
                                     "use another --out")
        others = sorted(p.name for p in Path(out).iterdir() if p.name not in (".lock", MANIFEST))
        if old is None and others:
            raise engine.ConfigError(f"--out {out} is not empty and holds no predictions of finetune.predict "
                                     f"(e.g. {others[0]}); use a new or empty folder")
        write_json(path, {**(old or {}), **manifest})
    except BaseException:
        lock.release(failed=True)
        raise
    return lock, old is None


def predict(args) -> list[Path]:
    """Segment every input scan; returns the written label files."""
    inputs = find_inputs(args.input)
    predictor = Predictor(args.run, args.device, args.tta, args.amp)
    check_out(args.out, inputs, args.input, args.run, args.probabilities)
    inference = predictor.inference
    manifest = {"run": str(Path(args.run).resolve()), "model_sha256": engine.file_digest(predictor.spec["path"]),
                "tta": bool(inference.tta_flips), "amp": inference.amp}
    names = predictor.spec["class_names"] or {}
    print(f"predict: {len(inputs)} scan(s) with {predictor.spec['arch']} ({predictor.spec['encoder']}) of {args.run}; "
          f"classes {', '.join(f'{k} {v}' for k, v in sorted(names.items())) or predictor.spec['num_classes']}; "
          f"TTA flips {list(inference.tta_flips) or 'none'}, AMP {'on' if inference.amp else 'off'} -> {args.out}",
          flush=True)
    lock, new = claim_out(args.out, manifest)
    written = []
    try:
        for path in tqdm(inputs, desc="predicting", unit="scan", disable=not engine.on_terminal()):
            volume = scans.read_volume(path, window=inference.normalization.window)
            probs = predictor.probabilities(volume)
            out = scans.write_segmentation(volume, probs.argmax(0), args.out, probs if args.probabilities else None)
            written.append(out)
            if not engine.on_terminal():
                print(f"{path} -> {out}", flush=True)
    except BaseException:
        if new and not written:  # nothing came of it: leave no folder (or no manifest) behind
            (Path(args.out) / MANIFEST).unlink(missing_ok=True)
        lock.release(failed=True)
        raise
    lock.release()
    print(f"done: {len(written)} segmentation(s) in {args.out}", flush=True)
    return written


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        predict(args)
    except (ValueError, OSError, engine.RunBusy) as e:  # ValueError: ConfigError, ScanError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
