"""Reporters: how ``fit()`` tells the outside world about an epoch.

``fit()`` calls ``reporter.report(metrics, step, checkpoint_dir)`` once per evaluation on every rank
(metrics already all-reduced, so identical on all ranks; ``checkpoint_dir`` only on rank 0). The
training loop never writes logs itself: the CLI injects :class:`ConsoleReporter`,
:class:`JsonlReporter` and :class:`TensorBoardReporter`; ``study/`` injects a Ray reporter.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

__all__ = [
    "ConsoleReporter",
    "JsonlReporter",
    "MultiReporter",
    "NullReporter",
    "Reporter",
    "TensorBoardReporter",
]


class Reporter(Protocol):
    """Receives each epoch's metrics (named as in docs/ARCHITECTURE.md, "One name per number") and
    the epoch checkpoint folder."""

    def report(
        self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None
    ) -> None: ...


class NullReporter:
    """Discards everything (tests, non-main ranks)."""

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        return None


class MultiReporter:
    """Fans one report out to several reporters."""

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self.reporters = list(reporters)

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        for r in self.reporters:
            r.report(metrics, step, checkpoint_dir)

    def close(self) -> None:
        for r in self.reporters:
            close = getattr(r, "close", None)
            if close is not None:
                close()


class ConsoleReporter:
    """One line per epoch: the loss, the selection metric and the per-view NDCG@10."""

    KEYS = (
        "train/loss",
        "val/ndcg@10",
        "val/ndcg@10/text",
        "val/ndcg@10/image",
        "val/modality_balance",
    )

    def __init__(self, stream: TextIO = sys.stdout, metric: str = "val/ndcg@10") -> None:
        self.stream = stream
        self.keys = tuple(dict.fromkeys((*self.KEYS[:1], metric, *self.KEYS[1:])))

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        parts = [f"epoch {int(metrics.get('epoch', step)):3d}"]
        parts += [f"{k} {metrics[k]:.4f}" for k in self.keys if k in metrics]
        if "time/epoch_s" in metrics:
            parts.append(f"{metrics['time/epoch_s']:.1f}s")
        print("  ".join(parts), file=self.stream, flush=True)


class JsonlReporter:
    """Appends one JSON object per report to ``path`` (``metrics.jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        row: dict[str, Any] = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()
        }
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


class TensorBoardReporter:
    """Scalars under exactly the metric names (``torch.utils.tensorboard`` keeps ``@`` in tags).

    The one TensorBoard writer of the project: single runs use it directly, studies write each
    trial's run with it. A non-finite value (a study metric carried forward before the first
    validation is NaN) is left out: it is no point on a curve.
    """

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        _scalars(self.writer, metrics, step)

    def describe(self, markdown: str) -> None:
        """A description of the run, in TensorBoard's Text tab (not a scalar card)."""
        self.writer.add_text("description", markdown, global_step=0)
        self.writer.flush()

    def hparams(
        self,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        step: int,
        *,
        metric_names: Sequence[str] = (),
        group: str = "best",
        failed: bool = False,
    ) -> None:
        """The hparams plugin's summary of a finished run.

        ``params`` (numbers, strings, booleans) are its hyperparameter columns, in this order.
        The plugin reads each metric's value from a scalar series; ``metrics`` (the values at
        ``step``, e.g. the best epoch) are therefore written to the sub-run ``<run>/<group>``
        under their own names: beside curves of the same tags each is one marked point, not one
        more single-point card in TensorBoard's time series. The table's metric columns are
        ``metric_names`` (default: the keys of ``metrics``) in this order, the first one first.
        ``failed`` sets the session's status, which the table shows and filters by.
        """
        from torch.utils.tensorboard import SummaryWriter

        names = list(metric_names) or list(metrics)
        file_writer = self.writer.file_writer
        assert file_writer is not None  # SummaryWriter opens its file writer when it is made
        for summary in _hparams_summaries(params, names, group, failed):
            file_writer.add_summary(summary)
        self.writer.flush()
        sub = SummaryWriter(log_dir=str(self.log_dir / group))
        _scalars(sub, metrics, step)
        sub.close()

    def close(self) -> None:
        self.writer.close()


def _scalars(writer: Any, metrics: Mapping[str, float], step: int) -> None:
    """Every finite number of ``metrics`` but ``epoch`` (the step) as a scalar at ``step``."""
    for key, value in metrics.items():
        if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
            writer.add_scalar(key, float(value), global_step=step)
    writer.flush()


def _hparams_summaries(
    params: Mapping[str, Any], metric_names: Sequence[str], group: str, failed: bool
) -> list[Any]:
    """The hparams plugin's experiment (columns in order), session start (values) and session
    end (status) summaries. Every run of a study writes the same experiment: the plugin shows
    whichever run's it finds first."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo()
    infos = []
    for name, value in params.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value, kind = value, api_pb2.DATA_TYPE_BOOL
        elif isinstance(value, int | float):
            start.hparams[name].number_value, kind = float(value), api_pb2.DATA_TYPE_FLOAT64
        else:
            start.hparams[name].string_value, kind = str(value), api_pb2.DATA_TYPE_STRING
        infos.append(api_pb2.HParamInfo(name=name, type=kind))
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(group=group, tag=m), display_name=m)
            for m in metric_names
        ],
    )
    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    contents = {
        metadata.EXPERIMENT_TAG: plugin_data_pb2.HParamsPluginData(experiment=experiment),
        metadata.SESSION_START_INFO_TAG: plugin_data_pb2.HParamsPluginData(
            session_start_info=start
        ),
        metadata.SESSION_END_INFO_TAG: plugin_data_pb2.HParamsPluginData(
            session_end_info=plugin_data_pb2.SessionEndInfo(status=status)
        ),
    }
    out = []
    for tag, content in contents.items():
        content.version = metadata.PLUGIN_DATA_VERSION
        plugin = SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()
        )
        out.append(
            Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])
        )
    return out
