"""Scan tools.

    python -m scans summary data/msd_hippocampus
    python -m scans subjects data/msd_hippocampus      # the subject map and the evidence for it
    python -m scans split data/msd_hippocampus --test-fraction 0.2 --seed 0 \
        --fractions 0.01 0.1 1.0 --seeds 0 1 2 --out splits.json [--groups subjects.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from atomicio import write_json

from .discover import find_cases
from .errors import ScanError
from .io import read_volume
from .protocol import intensity_fingerprint, load_groups, load_protocol, pairing_evidence, subject_map
from .splits import make_splits
from .summary import format_summary, summarize


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scans", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary", help="describe a dataset folder")
    s.add_argument("data_dir")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    g = sub.add_parser("subjects", help="the case -> subject map and how well the volumes' fingerprints support it")
    g.add_argument("data_dir")
    g.add_argument("--groups", help="case -> subject JSON map (default: the dataset's protocol.json)")
    sp = sub.add_parser("split", help="write a subject-level split with nested label fractions")
    sp.add_argument("data_dir")
    sp.add_argument("--test-fraction", type=float, default=0.2)
    sp.add_argument("--seed", type=int, default=0, help="seed of the test split")
    sp.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    sp.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="label seeds: one nested set of label fractions each")
    sp.add_argument("--groups", help="case -> subject JSON map (default: the dataset's protocol.json, if any)")
    sp.add_argument("--labelled-only", action=argparse.BooleanOptionalAction, default=True,
                    help="split only cases that have a label (default: yes)")
    sp.add_argument("--out", required=True)
    return p


def check_split_out(args) -> None:
    """``--out`` may replace an earlier split file, never another file (a dataset's ``dataset.json``, a scan,
    the ``--groups`` map): ScanError naming it, before anything is read or written."""
    out = Path(args.out)
    if out.is_dir():
        raise ScanError(out, "--out is a folder; give the split file to write")
    if args.groups and out.resolve() == Path(args.groups).resolve():
        raise ScanError(out, "--out is the --groups file this split reads; write the split elsewhere")
    if out.exists():
        try:
            old = json.loads(out.read_text())
        except (OSError, ValueError):
            old = None
        if not (isinstance(old, dict) and {"test", "train_pool", "label_fractions"} <= set(old)):
            raise ScanError(out, "--out exists and is not a split file (it would be overwritten); write the split elsewhere")


def run_split(args) -> dict:
    check_split_out(args)
    cases = find_cases(args.data_dir)
    if args.labelled_only:
        cases = [c for c in cases if c.label is not None]
        if not cases:
            raise ScanError(args.data_dir, "no labelled cases to split (use --no-labelled-only for unlabelled data)")
    splits = make_splits([c.case_id for c in cases], args.test_fraction, args.seed, args.fractions, args.seeds,
                         dataset=Path(args.data_dir).name, groups=groups_of(args))
    write_json(args.out, splits)
    return splits


def groups_of(args) -> dict:
    """``--groups FILE``, else the dataset's protocol.json subjects, else {} (each case its own subject)."""
    return load_groups(args.groups) if args.groups else load_protocol(args.data_dir).subjects


def run_subjects(args) -> str:
    """The subject map of a dataset and the fingerprint evidence for it, as text."""
    cases = find_cases(args.data_dir)
    subject_of = subject_map([c.case_id for c in cases], groups_of(args))
    members: dict[str, list[str]] = {}
    for c, s in subject_of.items():
        members.setdefault(s, []).append(c)
    multi = [m for m in members.values() if len(m) > 1]
    lines = [f"{len(cases)} cases, {len(members)} subjects ({len(multi)} with more than one volume)",
             f"map: {args.groups or load_protocol(args.data_dir).path or 'none (each case is its own subject)'}"]
    if multi:
        prints = {c.case_id: intensity_fingerprint(read_volume(c.image).array) for c in cases}
        within = [(m[i], m[j]) for m in multi for i in range(len(m)) for j in range(i + 1, len(m))]
        rng = np.random.default_rng(0)
        ids = sorted(prints)
        between = [(ids[i], ids[j]) for i, j in rng.integers(0, len(ids), (2000, 2)) if subject_of[ids[i]] != subject_of[ids[j]]]
        for name, pairs in (("same subject", within), ("different subjects", between)):
            e = pairing_evidence(prints, pairs)
            lines.append(f"  {name:<19} {e['pairs']:>5} pairs: same smallest intensity step {e['same_step']:.0%}, "
                         f"same dtype {e['same_dtype']:.0%}, median 99th-percentile difference {e['median_p99_rel_diff']:.1%}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.cmd == "summary":
            s = summarize(args.data_dir, progress=sys.stderr.isatty())
            print(json.dumps(s, indent=1) if args.json else format_summary(s))
        elif args.cmd == "subjects":
            print(run_subjects(args))
        else:
            s = run_split(args)
            sizes = {k: len(v) for k, v in s["label_fractions"][str(args.seeds[0])].items()}
            print(f"wrote {args.out}: {len(s['test'])} test cases, {len(s['train_pool'])} in the training pool "
                  f"({s['subjects']} subjects, none on both sides); label seed {args.seeds[0]} fraction sizes {sizes}")
    except ValueError as e:  # ScanError is one
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
