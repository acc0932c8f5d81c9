"""Reproduce the transfer-learning table.

    python -m experiments reproduce --config experiments/configs/quick.yaml              # this machine
    python -m experiments reproduce --config experiments/configs/quick.yaml --executor debug
    python -m experiments reproduce --config experiments/configs/paper.yaml \
        --executor slurm --profile slurm/profiles/example-gpu.yaml                      # a SLURM cluster
    python -m experiments status --config experiments/configs/paper.yaml                 # each cell's state
    python -m experiments collect --config experiments/configs/paper.yaml                # table from what finished
    python -m experiments collect --config experiments/configs/quick.yaml \
        --records results/quick/runs.jsonl                                               # table from committed records
"""
from __future__ import annotations

import argparse
import sys

import engine
from slurm import EXECUTORS

from .collect import collect
from .config import load_config
from .reproduce import reproduce
from .status import print_status


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m experiments", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reproduce", help="run every missing run of the grid, then collect")
    r.add_argument("--config", required=True)
    r.add_argument("--executor", choices=EXECUTORS, default="local")
    r.add_argument("--profile", help="SLURM profile YAML (with --executor slurm)")
    s = sub.add_parser("status", help="show each run's state")
    s.add_argument("--config", required=True)
    c = sub.add_parser("collect", help="build the table from finished runs")
    c.add_argument("--config", required=True)
    c.add_argument("--records", metavar="RUNS_JSONL",
                   help="recompute table.md, table.csv and the plot from an earlier collection's runs.jsonl "
                        "(its splits.json beside it) instead of the run folders")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.cmd == "reproduce":
            if args.executor == "slurm" and not args.profile:
                raise engine.ConfigError("--executor slurm needs --profile slurm/profiles/NAME.yaml")
            res = reproduce(cfg, args.executor, args.profile)
            return 1 if res.get("failed") else 0
        if args.cmd == "collect":
            collect(cfg, records=args.records)
            return 0
        return print_status(cfg)
    except (ValueError, OSError) as e:  # ValueError: ConfigError, scans.ScanError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
