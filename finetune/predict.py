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
``--tta`` averages in the flips the run trained with (never a flip that changes a label's
meaning); ``--probabilities`` also writes the softmax maps. A scan that cannot be read stops
the command with one line naming it; files already written are complete.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import engine
import scans

from .evaluate import predict_scan
from .modelfile import load_model


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m finetune.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished fine-tuning run folder (holds model.pt)")
    p.add_argument("--input", required=True, help="a scan, a DICOM series folder, or a folder of scans")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--tta", action="store_true", help="average in the run's label-safe flips")
    p.add_argument("--probabilities", action="store_true", help="also write the class probabilities")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA float16, CPU bfloat16)")
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
    """A run's segmenter with its preprocessing: ``probabilities(volume)`` -> (C, X, Y, Z) float32."""

    def __init__(self, run_dir, device="auto", tta: bool = False, amp: bool = False):
        self.device = engine.resolve_device(device)
        self.model, self.spec = load_model(run_dir, self.device)
        self.amp = amp
        self.tta = scans.slice_flips(self.spec["flip_axes"], self.spec["axis"]) if tta else ()

    @torch.no_grad()
    def probabilities(self, volume: scans.Volume):
        image = scans.normalize(volume.array, self.spec["normalization"])
        with engine.deterministic_on_cpu(self.device):  # as in the run's evaluation
            return predict_scan(self.model, image, volume.spacing, self.spec["axis"], self.device, self.tta, self.amp,
                                self.spec["size"], self.spec.get("spacing"))


def predict(args) -> list[Path]:
    """Segment every input scan; returns the written label files."""
    inputs = find_inputs(args.input)
    predictor = Predictor(args.run, args.device, args.tta, args.amp)
    names = predictor.spec["class_names"] or {}
    print(f"predict: {len(inputs)} scan(s) with {predictor.spec['arch']} ({predictor.spec['encoder']}) of {args.run}; "
          f"classes {', '.join(f'{k} {v}' for k, v in sorted(names.items())) or predictor.spec['num_classes']}; "
          f"TTA flips {list(predictor.tta) or 'none'} -> {args.out}", flush=True)
    written = []
    for path in tqdm(inputs, desc="predicting", unit="scan", disable=not engine.on_terminal()):
        volume = scans.read_volume(path, window=predictor.spec["normalization"].window)
        probs = predictor.probabilities(volume)
        out = scans.write_segmentation(volume, probs.argmax(0), args.out, probs if args.probabilities else None)
        written.append(out)
        if not engine.on_terminal():
            print(f"{path} -> {out}", flush=True)
    print(f"done: {len(written)} segmentation(s) in {args.out}", flush=True)
    return written


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        predict(args)
    except (scans.ScanError, ValueError, FileNotFoundError, engine.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
