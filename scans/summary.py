"""Dataset summary: cases, shapes, spacings, dtypes, label values, intensity percentiles, problems."""
from __future__ import annotations

from collections import Counter

import numpy as np
from tqdm import tqdm

from .discover import find_cases
from .errors import ScanError
from .io import read_volume
from .protocol import load_protocol, subject_map
from .volumes import check_label


def summarize(data_dir, progress: bool = True) -> dict:
    """Read every case (raw intensities) and collect statistics. Bad files raise ScanError."""
    cases = find_cases(data_dir)
    shapes, spacings, dtypes, label_dtypes = [], [], Counter(), Counter()
    label_counts: Counter = Counter()
    pcts = []
    notes = []
    for c in tqdm(cases, desc="summary", unit="case", disable=not progress, leave=False):
        vol = read_volume(c.image)
        shapes.append(vol.array.shape)
        spacings.append(vol.spacing)
        dtypes[vol.dtype] += 1
        pcts.append(np.percentile(vol.array, [1, 50, 99]))
        if c.label is None:
            continue
        lab = read_volume(c.label)
        if lab.array.shape != vol.array.shape:
            raise ScanError(c.label, f"label shape {lab.array.shape} does not match image shape {vol.array.shape} ({c.image})")
        label_dtypes[lab.dtype] += 1
        if lab.array.dtype.kind == "f":
            notes.append(f"{c.label}: labels stored as {lab.dtype} (integer-valued; cast on load)")
        values, counts = np.unique(check_label(lab.array, c.label), return_counts=True)
        label_counts.update(dict(zip(values.tolist(), counts.tolist())))
    labelled = sum(c.label is not None for c in cases)
    if 0 < labelled < len(cases):
        notes.append(f"{len(cases) - labelled} cases have no label")
    values = sorted(label_counts)
    if values and values != list(range(values[-1] + 1)):
        notes.append(f"label values {values} are not consecutive from 0")
    if len(dtypes) > 1:
        notes.append(f"mixed image dtypes {dict(dtypes)}")
    protocol = load_protocol(data_dir)
    subjects = set(subject_map([c.case_id for c in cases], protocol.subjects).values())
    shapes_a, spacings_a, pcts_a = np.array(shapes), np.array(spacings), np.array(pcts)
    total = sum(label_counts.values())
    return {
        "data_dir": str(data_dir),
        "cases": len(cases),
        "labelled": labelled,
        "subjects": len(subjects),
        "subjects_source": protocol.path if protocol.subjects else None,
        "flip_axes": list(protocol.flip_axes),
        "shape_min": shapes_a.min(0).tolist(),
        "shape_max": shapes_a.max(0).tolist(),
        "spacing_min": spacings_a.min(0).round(4).tolist(),
        "spacing_max": spacings_a.max(0).round(4).tolist(),
        "image_dtypes": dict(dtypes),
        "label_dtypes": dict(label_dtypes),
        "label_fractions": {int(v): label_counts[v] / total for v in values},
        "intensity_p1_range": [float(pcts_a[:, 0].min()), float(pcts_a[:, 0].max())],
        "intensity_p50_range": [float(pcts_a[:, 1].min()), float(pcts_a[:, 1].max())],
        "intensity_p99_range": [float(pcts_a[:, 2].min()), float(pcts_a[:, 2].max())],
        "notes": notes,
    }


def format_summary(s: dict) -> str:
    lines = [
        f"dataset        {s['data_dir']}",
        f"cases          {s['cases']} ({s['labelled']} labelled)",
        f"subjects       {s['subjects']} " + (f"(from {s['subjects_source']})" if s["subjects_source"]
                                              else "(no protocol.json: each case counted as its own subject)"),
        f"flip axes      {s['flip_axes'] or 'none'} (volume axes augmentation may flip)",
        f"shape          {' x '.join(map(str, s['shape_min']))}  to  {' x '.join(map(str, s['shape_max']))}",
        f"spacing (mm)   {s['spacing_min']}  to  {s['spacing_max']}",
        f"image dtypes   {s['image_dtypes']}",
    ]
    if s["labelled"]:
        lines.append(f"label dtypes   {s['label_dtypes']}")
        lines.append("label values   {" + ", ".join(str(v) for v in s["label_fractions"]) + "}")
        for v, f in s["label_fractions"].items():
            lines.append(f"  label {v}: {100 * f:.2f}% of voxels")
    lines.append("intensity percentiles per volume (min..max over volumes):")
    for p in ("p1", "p50", "p99"):
        lo, hi = s[f"intensity_{p}_range"]
        lines.append(f"  {p:<4} {lo:.4g} .. {hi:.4g}")
    lines.append(f"problems       {len(s['notes']) or 'none'}")
    lines += [f"  - {n}" for n in s["notes"]]
    return "\n".join(lines)
