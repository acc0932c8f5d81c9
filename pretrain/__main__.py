"""python -m pretrain: see pretrain/train.py for the launch commands (or python -m pretrain --help)."""
import sys

from .train import main

if __name__ == "__main__":
    sys.exit(main())
