"""python -m finetune: see finetune/train.py for the launch commands (or python -m finetune --help)."""
import sys

from .train import main

if __name__ == "__main__":
    sys.exit(main())
