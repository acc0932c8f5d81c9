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


# The HPARAMS table's columns for every kind of run. TensorBoard shows the columns of the first run
# definition it finds in a log directory, so pretraining and fine-tuning runs declare the same ones
# (a run leaves the other kind's empty), then their own other settings. SHOWN are ticked when the
# tab opens (TensorBoard ticks the first five, those marked as differing first).
COLUMNS = {"init": "", "arch": "", "label_fraction": "", "task": "", "encoder": "", "steps": 0, "epochs": 0,
           "lr": 0.0, "batch_size": 0, "label_seed": 0, "seed": 0, "init_file": ""}
SHOWN = ("arch", "init", "label_fraction", "task", "steps")
METRICS = ["test/mean_dice", "test/mean_hd95", "watch/dice", "encoder/knn_accuracy", "pretrain/accuracy"]


def write_hparams(writer, hparams: dict) -> None:
    """HPARAMS tab: this run's ``hparams`` (str, number or bool) beside the last value of each
    scalar in ``METRICS`` it logged, in the run's own folder; the columns are ``COLUMNS`` and then
    the run's other settings, so a log directory of pretraining and fine-tuning runs shows both."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    values = {k: v for k, v in hparams.items() if v is not None}
    columns = {**COLUMNS, **{k: v for k, v in values.items() if k not in COLUMNS}}
    experiment, _, _ = hparams_summary(columns, {tag: 0.0 for tag in METRICS})
    meta = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(meta.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in SHOWN
    meta.content = data.SerializeToString()
    _, start, end = hparams_summary(values, {})
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)


def write_layout(writer, charts: dict[str, list[str]], category: str = "compare runs") -> None:
    """CUSTOM SCALARS tab: one chart per title, each the tags matching its regexes, for every run."""
    writer.add_custom_scalars({category: {title: ["Multiline", tags] for title, tags in charts.items()}})
