"""Export a fine-tuned segmenter to ONNX, with dynamic batch, height and width.

    python -m finetune.export --run runs/ft/unet_rotation_10 --out model.onnx

Input ``image``: float32 (batch, 1, height, width), normalised as the run normalised its scans
(``model.pt``'s ``inference.normalization``: ``scans.normalize``); output ``logits``: float32
(batch, classes, height, width). Any height and width work (the network pads inside). After
export the file is checked against PyTorch with onnxruntime on two inputs of different sizes and
the largest absolute difference of the logits is printed (exit 1 above ``--tolerance``).
Needs the ``onnx`` extra: ``pip install -e ".[onnx]"`` (the test extra includes it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from atomicio import atomic_path

from .modelfile import load_model


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m finetune.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished fine-tuning run folder (holds model.pt)")
    p.add_argument("--out", required=True, help="the .onnx file to write (an existing .onnx file is replaced)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |onnxruntime - PyTorch| of the logits")
    return p


def export(model: torch.nn.Module, out, size, opset: int = 18) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX with dynamic batch, height and width; one file."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    x = torch.zeros(2, 1, *size)
    batch, height, width = (torch.export.Dim(n, min=1, max=8192) for n in ("batch", "height", "width"))
    with atomic_path(out, suffix=".onnx") as tmp:
        torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=["logits"], opset_version=opset,
                          dynamic_shapes=({0: batch, 2: height, 3: width},), dynamo=True, external_data=False,
                          verbose=False)
    return Path(out)


def max_difference(model: torch.nn.Module, onnx_file, shapes=((2, 1, 48, 64), (1, 1, 70, 101))) -> float:
    """Largest |onnxruntime - PyTorch| of the logits over random inputs of ``shapes`` (float32, CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for shape in shapes:
        x = rng.random(shape, dtype=np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {"image": x})[0]
        if got.shape != want.shape:
            raise ValueError(f"{onnx_file}: output shape {got.shape} != PyTorch's {want.shape} for input {shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def check_out(out) -> None:
    """``--out`` must be an ``.onnx`` file (so never a run's model.pt, config or checkpoint) and not a folder."""
    p = Path(out)
    if p.suffix.lower() != ".onnx":
        raise ValueError(f"--out {out}: the file to write must end in .onnx (nothing else is written over)")
    if p.is_dir():
        raise ValueError(f"--out {out} is a folder; give the .onnx file to write")


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        print('error: ONNX export needs the onnx extra: pip install -e ".[onnx]"', file=sys.stderr)
        return 2
    try:
        check_out(args.out)
        model, spec = load_model(args.run, "cpu")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        out = export(model, args.out, spec["inference"].size, args.opset)
    except OSError as e:  # a place that cannot be written
        print(f"error: --out {args.out}: cannot write there ({e.strerror or e})", file=sys.stderr)
        return 2
    diff = max_difference(model.to(memory_format=torch.contiguous_format), out)
    print(f"exported {spec['arch']} ({spec['encoder']}, {spec['num_classes']} classes) to {out}; "
          f"onnxruntime vs PyTorch max |difference| of the logits {diff:.2e}", flush=True)
    if diff > args.tolerance:
        print(f"error: difference {diff:.2e} above --tolerance {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
