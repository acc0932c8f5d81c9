"""What a run shows in TensorBoard besides its curves: the command, commit and config (TEXT), its
settings beside its results (HPARAMS), and a layout that puts one metric of every run in one chart
(CUSTOM SCALARS). The trainers pass their own settings, tags and charts; nothing here names them.

Every scalar's x-axis is the optimisation step (images seen is a scalar of its own), so runs with
other batch sizes line up. HPARAMS reads its metrics from scalars the run already logged: no
``hparam/*`` copies in SCALARS.
"""
from __future__ import annotations

import json
import shlex

from .args import as_flags


def command_line(prog: str, args: dict) -> str:
    """``python -m PROG --key value ...`` that re-creates ``args`` (every option explicit)."""
    return shlex.join(["python", "-m", prog, *as_flags(dict(sorted(args.items())))])


def _code(text: str) -> str:
    """Markdown code block (TensorBoard's TEXT tab renders markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


def write_run_text(writer, prog: str, args: dict, provenance: dict, extra: dict | None = None) -> None:
    """TEXT tab: ``run/command``, ``run/commit``, ``run/config`` (arguments, machine and ``extra``)."""
    writer.add_text("run/command", _code(command_line(prog, args)), 0)
    dirty = " (uncommitted changes)" if provenance.get("dirty") else ""
    writer.add_text("run/commit", f"`{provenance.get('commit')}`{dirty}", 0)
    config = {"args": args, "machine": provenance.get("machine"), **(extra or {})}
    writer.add_text("run/config", _code(json.dumps(config, indent=1, sort_keys=True, default=str)), 0)


def write_hparams(writer, hparams: dict) -> None:
    """HPARAMS tab: this run's settings (``hparams``: str, number or bool; None left out), in its own folder.

    No experiment definition is written: TensorBoard then builds the table from every run it finds,
    the union of their settings as columns (a text column lists its values, so rows can be picked by
    them) and their scalars as metrics, so a log directory of pretraining and fine-tuning runs shows
    both kinds, each with its own settings. The metrics are the last values of the scalars the run
    already logged (no ``hparam/*`` copies in SCALARS)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    values = {k: v for k, v in hparams.items() if v is not None}
    _, start, end = hparams_summary(values, {})
    for summary in (start, end):
        writer.file_writer.add_summary(summary)


def write_layout(writer, charts: dict[str, list[str]], category: str = "compare runs") -> None:
    """CUSTOM SCALARS tab: one chart per title, each the tags matching its regexes, for every run."""
    writer.add_custom_scalars({category: {title: ["Multiline", tags] for title, tags in charts.items()}})
