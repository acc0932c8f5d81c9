"""What a run shows in TensorBoard besides its curves: the command, commit and config (TEXT), its
settings beside its results (HPARAMS), and a layout that puts one metric of every run in one chart
(CUSTOM SCALARS).

Every scalar's x-axis is the optimisation step (images seen is a scalar of its own), so runs with
other batch sizes line up. HPARAMS reads its metrics from scalars the run already logged (for
example ``test/mean_dice``): no ``hparam/*`` copies in SCALARS.
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


def write_hparams(writer, hparams: dict, metric_tags: list[str]) -> None:
    """HPARAMS tab: this run's ``hparams`` (str, number or bool) beside the last value of each
    scalar in ``metric_tags``, in the run's own folder."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    values = {k: v for k, v in hparams.items() if v is not None}
    for summary in hparams_summary(values, {tag: 0.0 for tag in metric_tags}):
        writer.file_writer.add_summary(summary)


def write_layout(writer, charts: dict[str, list[str]], category: str = "compare runs") -> None:
    """CUSTOM SCALARS tab: one chart per title, each the tags matching its regexes, for every run."""
    writer.add_custom_scalars({category: {title: ["Multiline", tags] for title, tags in charts.items()}})
