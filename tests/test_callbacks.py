"""study/callbacks.py without a running study: its helpers, and the recorder on a fake trial."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import pytest

from study.callbacks import StudyContext, StudyRecorder, hparams_order, lost_reports
from study.records import TrialRecord, read_records, write_record
from vlm2rec.checkpoint import PROGRESS


def test_the_hparams_table_leads_with_the_study_metric_then_ranking_then_diagnostics() -> None:
    names = [
        "val/anisotropy_image",
        "val/erank_text",
        "val/modality_balance",
        "val/mrr",
        "val/ndcg@10/image",
        "val/ndcg@10/text",
        "val/oracle/ndcg@10",
        "val/recall@20",
    ]
    assert hparams_order("val/ndcg@10", names) == (
        "val/ndcg@10",
        "val/ndcg@10/image",
        "val/ndcg@10/text",
        "val/mrr",
        "val/oracle/ndcg@10",
        "val/recall@20",
        "val/anisotropy_image",
        "val/erank_text",
        "val/modality_balance",
    )
    assert hparams_order("val/mrr", names)[:2] == ("val/mrr", "val/ndcg@10/image")


#: Epochs of the run the tests below recover a report of; ``test/*`` come with the last one only.
LAST = 4


def _rows(epochs: Iterable[int]) -> list[dict[str, float]]:
    rows = [{"epoch": float(e), "val/ndcg@10": 0.1 * e, "train/loss": 5.0 - e} for e in epochs]
    return [{**row, "test/ndcg@10": 0.33} if row["epoch"] == LAST else row for row in rows]


def _checkpoint(root: Path) -> Path:
    """A Train checkpoint folder whose progress.json holds every report of the run."""
    folder = root / "train" / "train-t1" / "checkpoint_000"
    folder.mkdir(parents=True)
    progress = {"history": _rows(range(1, LAST + 1))}
    (folder / PROGRESS).write_text(json.dumps({"config": {}, "progress": progress}))
    return folder


def _record(checkpoint: Path, epochs: list[int]) -> TrialRecord:
    return TrialRecord(trial_id="t1", history=_rows(epochs), checkpoint_path=str(checkpoint))


def test_a_report_that_never_reached_tune_is_taken_from_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    checkpoint = _checkpoint(tmp_path)
    storage = str(tmp_path / "train")
    lost = lost_reports(_record(checkpoint, [1, 2, 4]), storage)
    assert lost == [{"epoch": 3.0, "val/ndcg@10": pytest.approx(0.3), "train/loss": 2.0}]
    # The same through a URI, as for s3:// storage: Train's path is then one in that file system.
    assert lost_reports(_record(checkpoint, [1, 2, 4]), f"file://{storage}") == lost
    # A complete history needs no checkpoint; an unreadable one leaves the gap.
    assert lost_reports(_record(tmp_path / "gone", [1, 2, 3]), storage) == []
    assert lost_reports(_record(tmp_path / "gone", [1, 2, 4]), storage) == []
    # The state of an older study knows no Train storage.
    assert lost_reports(_record(checkpoint, [1, 2, 4]), "") == []
    # A progress.json this project did not write leaves the gap too.
    (checkpoint / PROGRESS).write_text(json.dumps({"progress": {"history": [], "steps": 9}}))
    assert lost_reports(_record(checkpoint, [1, 2, 4]), storage) == []


def test_a_trial_that_ends_gets_its_lost_epoch_back_in_its_record(tmp_path: Path) -> None:
    """What a Ctrl-C or SIGTERM between a worker's report and Tune's left: epoch 3 trained and
    checkpointed, the rerun resumed at epoch 4."""
    study_dir = tmp_path / "study"
    ctx = StudyContext(
        study="s",
        study_dir=str(study_dir),
        metric="val/ndcg@10",
        mode="max",
        param_kinds={},
        base={},
        gpus_per_trial=0.0,
        data_fingerprint="f",
        git_sha=None,
        versions={},
        train_storage=str(tmp_path / "train"),
    )
    write_record(ctx.folder, _record(_checkpoint(tmp_path), [1, 2, 4]))
    StudyRecorder(ctx, "search").on_trial_complete(0, [], SimpleNamespace(trial_id="t1"))
    (record,) = read_records(ctx.folder)
    assert [row["epoch"] for row in record.history] == [1.0, 2.0, 3.0, 4.0]
    assert record.status == "completed" and record.test_metrics == {"test/ndcg@10": 0.33}
