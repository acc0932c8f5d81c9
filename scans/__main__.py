"""Scan tools.

    python -m scans summary data/msd_hippocampus
    python -m scans split data/msd_hippocampus --test-fraction 0.2 --seed 0 \
        --fractions 0.01 0.1 1.0 --seeds 0 1 2 --out splits.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from atomicio import write_json

from .discover import find_cases
from .errors import ScanError
from .splits import make_splits
from .summary import format_summary, summarize


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scans", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary", help="describe a dataset folder")
    s.add_argument("data_dir")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    sp = sub.add_parser("split", help="write a patient-level split with nested label fractions")
    sp.add_argument("data_dir")
    sp.add_argument("--test-fraction", type=float, default=0.2)
    sp.add_argument("--seed", type=int, default=0, help="seed of the test split")
    sp.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    sp.add_argument("--seeds", type=int, nargs="+", default=[0], help="one nested set of label fractions per seed")
    sp.add_argument("--labelled-only", action=argparse.BooleanOptionalAction, default=True,
                    help="split only cases that have a label (default: yes)")
    sp.add_argument("--out", required=True)
    return p


def run_split(args) -> dict:
    cases = find_cases(args.data_dir)
    if args.labelled_only:
        cases = [c for c in cases if c.label is not None]
        if not cases:
            raise ScanError(args.data_dir, "no labelled cases to split (use --no-labelled-only for unlabelled data)")
    splits = make_splits([c.case_id for c in cases], args.test_fraction, args.seed, args.fractions, args.seeds,
                         dataset=Path(args.data_dir).name)
    write_json(args.out, splits)
    return splits


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.cmd == "summary":
            s = summarize(args.data_dir, progress=sys.stderr.isatty())
            print(json.dumps(s, indent=1) if args.json else format_summary(s))
        else:
            s = run_split(args)
            sizes = {k: len(v) for k, v in s["label_fractions"][str(args.seeds[0])].items()}
            print(f"wrote {args.out}: {len(s['test'])} test cases, {len(s['train_pool'])} in the training pool; "
                  f"seed {args.seeds[0]} fraction sizes {sizes}")
    except (ScanError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
