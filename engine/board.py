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


def command_line(prog: str, args: dict, first=()) -> str:
    """``python -m PROG --key value ...`` that re-creates ``args`` (every option explicit): the options named in
    ``first`` first, in that order (what tells runs apart, so it is on screen), then the rest sorted."""
    ordered = {k: args[k] for k in first if k in args} | dict(sorted(args.items()))
    return shlex.join(["python", "-m", prog, *as_flags(ordered)])


def add_text(writer, tag: str, text: str, step: int = 0) -> None:
    """A TEXT-tab entry under exactly ``tag`` (markdown; ``SummaryWriter.add_text`` would append ``/text_summary``)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode()],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor)]), step)


def _code(text: str) -> str:
    """Markdown code block (TensorBoard's TEXT tab renders markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


def write_run_text(writer, prog: str, args: dict, provenance: dict, extra: dict | None = None, first=()) -> None:
    """TEXT tab: ``run/command`` (the options in ``first`` first), ``run/commit``, ``run/config`` (arguments,
    machine and ``extra``)."""
    add_text(writer, "run/command", _code(command_line(prog, args, first)))
    dirty = " (uncommitted changes)" if provenance.get("dirty") else ""
    add_text(writer, "run/commit", f"`{provenance.get('commit')}`{dirty}")
    config = {"args": args, "machine": provenance.get("machine"), **(extra or {})}
    add_text(writer, "run/config", _code(json.dumps(config, indent=1, sort_keys=True, default=str)))


def write_hparams(writer, hparams: dict) -> None:
    """HPARAMS tab: this run's settings (``hparams``: str, number or bool; None left out), in its own folder.

    No experiment definition is written: TensorBoard then builds the table from every run it finds,
    the union of their settings as columns (a text column lists its values, so rows can be picked by
    them) and their scalars as metrics, so a log directory of pretraining and fine-tuning runs shows
    both kinds, each with its own settings. It shows the first five columns that differ between runs
    (in name order) and the first five metrics (in tag order): a trainer gives every run of either kind
    the same few leading columns and metrics, filled, so the parallel-coordinates view draws every run.
    The metrics are the last values of the scalars the run logged (no ``hparam/*`` copies in SCALARS)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    values = {k: v for k, v in hparams.items() if v is not None}
    _, start, end = hparams_summary(values, {})
    for summary in (start, end):
        writer.file_writer.add_summary(summary)


def write_layout(writer, charts: dict[str, list[str]], category: str = "compare runs") -> None:
    """CUSTOM SCALARS tab: one chart per title, each the tags matching its regexes, for every run."""
    writer.add_custom_scalars({category: {title: ["Multiline", tags] for title, tags in charts.items()}})
