"""Reporters: console line, JSONL rows (NaN -> null), TensorBoard tags kept verbatim, fan-out."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

import pytest
from tb_hparams import hparams_table
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vlm2rec.reporting import (
    ConsoleReporter,
    JsonlReporter,
    MultiReporter,
    NullReporter,
    TensorBoardReporter,
)


def _epoch(e: int) -> dict[str, float]:
    return {
        "epoch": float(e),
        "train/loss": 3.0 / e,
        "val/ndcg@10": 0.1 * e,
        "val/ndcg@10/image": 0.05 * e,
        "val/recall@20": 0.2 * e,
        "time/epoch_s": 1.5,
    }


def test_console_line_has_loss_metric_views_and_time() -> None:
    out = io.StringIO()
    ConsoleReporter(out, metric="val/recall@20").report(_epoch(2), 2, None)
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.startswith("epoch   2")
    # the selection metric comes right after the loss; absent keys (text view) are skipped
    assert line.index("train/loss 1.5000") < line.index("val/recall@20 0.4000")
    assert line.index("val/recall@20") < line.index("val/ndcg@10 0.2000")
    assert "val/ndcg@10/image 0.1000" in line and "/text" not in line
    assert line.rstrip().endswith("1.5s")


def test_console_default_metric_is_not_repeated() -> None:
    out = io.StringIO()
    ConsoleReporter(out).report(_epoch(1), 1, None)
    assert out.getvalue().count("val/ndcg@10 ") == 1


def test_jsonl_appends_one_row_per_report_and_nulls_non_finite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "metrics.jsonl"
    rep = JsonlReporter(path)
    rep.report(_epoch(1), 1, None)
    rep.report({**_epoch(2), "val/mrr": math.nan, "train/loss": math.inf}, 2, tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert rows[0] == _epoch(1)
    assert rows[1]["val/mrr"] is None and rows[1]["train/loss"] is None
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()  # strict JSON


def test_tensorboard_keeps_tags_verbatim(tmp_path: Path) -> None:
    rep = TensorBoardReporter(tmp_path / "tb")
    for e in (1, 2, 3):
        rep.report(_epoch(e), e, None)
    rep.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    # '@' survives (tensorboardX would write val/ndcg_10); 'epoch' is the step, not a scalar
    assert tags == set(_epoch(1)) - {"epoch"}
    events = acc.Scalars("val/ndcg@10")
    assert [ev.step for ev in events] == [1, 2, 3]
    assert [ev.value for ev in events] == pytest.approx([0.1, 0.2, 0.3])


def test_hparams_leads_with_the_given_metric_and_adds_no_cards(tmp_path: Path) -> None:
    """The summary's values go to the sub-run ``best`` under the curves' own tags (one marked
    point per curve, no single-point cards of their own), and the table's metric columns come
    in the order given, whatever their names."""
    run = tmp_path / "tb" / "search-a"
    rep = TensorBoardReporter(run)
    for e in (1, 2, 3):
        rep.report(_epoch(e), e, None)
    best = {"val/ndcg@10": 0.2, "val/recall@20": 0.4}
    rep.hparams(
        {"loss.alpha": 0.5, "kind": "search"},
        best,
        2,
        metric_names=["val/recall@20", "val/ndcg@10"],
    )
    rep.close()
    columns, values = hparams_table(tmp_path / "tb")
    assert columns == ["val/recall@20", "val/ndcg@10"]  # as given, not sorted
    assert values == {"search-a": pytest.approx(best)}
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(_epoch(1)) - {"epoch"}  # the curves only
    sub = EventAccumulator(str(run / "best"))
    sub.Reload()
    assert set(sub.Tags()["scalars"]) == set(best) <= set(acc.Tags()["scalars"])
    assert [ev.step for ev in sub.Scalars("val/ndcg@10")] == [2]


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], int, Path | None]] = []
        self.closed = 0

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        self.calls.append((dict(metrics), step, checkpoint_dir))

    def close(self) -> None:
        self.closed += 1


def test_multi_reporter_fans_out_and_closes_what_can_close(tmp_path: Path) -> None:
    a, b = _Recorder(), _Recorder()
    multi = MultiReporter([a, NullReporter(), b])
    multi.report(_epoch(1), 1, tmp_path)
    assert a.calls == b.calls == [(_epoch(1), 1, tmp_path)]
    multi.close()  # NullReporter has no close(): skipped, not an error
    assert a.closed == b.closed == 1
