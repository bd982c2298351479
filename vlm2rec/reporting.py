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

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, float(value), global_step=step)
        self.writer.flush()

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """The hparams plugin's summary of a finished run, and ``metrics`` as scalars at ``step``
        (the plugin's table reads the metric values from those tags)."""
        from torch.utils.tensorboard.summary import hparams

        file_writer = self.writer.file_writer
        assert file_writer is not None  # SummaryWriter opens its file writer when it is made
        for summary in hparams(dict(params), dict(metrics)):
            file_writer.add_summary(summary)
        self.report(metrics, step, None)

    def close(self) -> None:
        self.writer.close()
