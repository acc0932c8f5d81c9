"""The launcher: submit a pretraining or fine-tuning run to a SLURM cluster through submitit.

    python -m slurm submit pretrain --profile slurm/profiles/example-gpu.yaml \\
        --task simclr --split splits.json --encoder resnet50 --epochs 100 --out runs/pretrain/simclr
    python -m slurm submit finetune --profile slurm/profiles/example-gpu.yaml \\
        --arch transunet --init runs/pretrain/simclr/encoder.pt --fraction 0.1 --split splits.json \\
        --out runs/ft/transunet_simclr_10

Every option after the trainer's name is the trainer's own (``python -m pretrain --help``,
``python -m finetune --help``) and is checked before anything is submitted; the job runs exactly
``python -m pretrain|finetune ARGS...`` and, when pre-empted or out of time, requeues and resumes
from its run folder. Logs: ``RUN_DIR/slurm/<job id>_0_log.{out,err}``. A whole transfer table:
``python -m experiments reproduce --config C --executor slurm --profile P``.
"""
from __future__ import annotations

import argparse
import sys

from .jobs import TRAINERS, check_run_args
from .submit import submit_run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m slurm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    submit = sub.add_parser("submit", help="submit one pretraining or fine-tuning run as a SLURM job")
    kinds = submit.add_subparsers(dest="kind", required=True)
    for kind, trainer in TRAINERS.items():
        k = kinds.add_parser(kind, parents=[trainer.get_args_parser(add_help=False)],
                             help=f"python -m {kind} ARGS... as a SLURM job",
                             description=f"Submit `python -m {kind} ARGS...` as a SLURM job.")
        k.add_argument("--profile", required=True, help="SLURM profile YAML (slurm/profiles/example-gpu.yaml)")
    return p


def trainer_argv(argv: list[str], kind: str) -> list[str]:
    """The trainer's own arguments: ``argv`` after ``submit KIND``, without ``--profile P``."""
    rest, out, skip = argv[argv.index(kind) + 1:], [], False
    for a in rest:
        if skip:
            skip = False
        elif a == "--profile":
            skip = True
        elif not a.startswith("--profile="):
            out.append(a)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    try:
        trainer = TRAINERS[args.kind]
        run_args = trainer_argv(argv, args.kind)
        check_run_args(args.kind, trainer.get_args_parser().parse_args(run_args))  # checked before anything is submitted
        name = getattr(args, "task", None) or getattr(args, "arch", "run")
        job = submit_run(args.kind, run_args, args.profile, args.out, name)
    except (ValueError, OSError) as e:  # ValueError: ConfigError, scans.ScanError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"submitted {args.kind} job {job['job_id']}; logs: {job['stdout']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
