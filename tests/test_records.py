"""study/records.py: the trial record's JSON round trip, its report updates, its leaderboard
columns, the study folder layout, and the shared helpers (plain, best_epoch_index on is_better)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from study.records import (
    VERSION_PACKAGES,
    LeaderboardError,
    StudyFolder,
    TrialRecord,
    best_epoch_index,
    plain,
    read_records,
    record_columns,
    run_name,
    write_record,
)
from vlm2rec.atomic import atomic_write_text
from vlm2rec.selection import is_better


def _record() -> TrialRecord:
    return TrialRecord(
        "t1",
        kind="reference",
        params={"loss.alpha": 0.0},
        history=[{"epoch": 1.0, "val/ndcg@10": 0.2}, {"epoch": 2.0, "val/ndcg@10": 0.3}],
        test_metrics={"test/ndcg@10": 0.25},
        wall_s=12.5,
        gpus=2.0,
        config={"loss": {"alpha": 0.0}},
        seed=3,
        versions={"torch": "2.13"},
    )


def test_json_round_trip_and_tolerant_reading() -> None:
    rec = _record()
    assert TrialRecord.from_json(rec.to_json()) == rec
    data = json.loads(rec.to_json())
    data["from_a_newer_version"] = 1  # unknown keys are ignored
    del data["history"]  # missing keys take their defaults
    back = TrialRecord.from_json(json.dumps(data))
    assert back.history == [] and back.trial_id == "t1" and back.kind == "reference"


def test_bad_kind_is_refused() -> None:
    with pytest.raises(LeaderboardError, match=r"trial x: kind 'baseline'"):
        TrialRecord("x", kind="baseline")  # type: ignore[arg-type]


def test_with_report_keeps_one_row_per_epoch_in_order() -> None:
    rec = _record().with_report({"epoch": 3.0, "val/ndcg@10": 0.4})
    rec = rec.with_report({"epoch": 2.0, "val/ndcg@10": 0.35})  # re-reported after a restore
    assert [(h["epoch"], h["val/ndcg@10"]) for h in rec.history] == [
        (1.0, 0.2),
        (2.0, 0.35),
        (3.0, 0.4),
    ]
    assert len(_record().history) == 2  # records are values: the original is unchanged


def test_record_columns_follow_the_fields() -> None:
    front, back = record_columns()
    assert [f.name for f in front] == ["trial_id", "kind", "status", "error"]
    assert [f.name for f in back][-len(VERSION_PACKAGES) :] == [
        f"{p}_version" for p in VERSION_PACKAGES
    ]
    types = {f.name: f.type for f in back}
    assert types["wall_s"] == pa.float64() and types["seed"] == pa.int64()
    assert "gpus" not in types and "params" not in types  # not columns as they are
    cols = _record().columns()
    assert json.loads(cols["config"]) == {"loss": {"alpha": 0.0}}
    assert cols["torch_version"] == "2.13" and cols["ray_version"] is None
    assert set(cols) == {f.name for f in [*front, *back]}


def test_folder_layout_and_record_files(tmp_path: Path) -> None:
    folder = StudyFolder(tmp_path / "s")
    assert read_records(folder) == []
    path = write_record(folder, _record())
    assert path == folder.record("t1") == tmp_path / "s" / "trials" / "t1.json"
    write_record(folder, dataclasses.replace(_record(), trial_id="t0"))
    assert [r.trial_id for r in read_records(folder)] == ["t0", "t1"]
    assert sorted(os.listdir(folder.trials)) == ["t0.json", "t1.json"]  # no temp files left
    assert folder.config("t1") == tmp_path / "s" / "configs" / "t1.json"
    assert (folder.leaderboard.name, folder.done.name) == ("leaderboard.parquet", "study_done.json")


def test_tensorboard_runs_say_what_the_trial_is() -> None:
    """Run names show the reference apart from searched trials, and a searched trial's params:
    each by its last path part, unless two share it."""
    params = {"loss.alpha": 0.31234, "loss.temperature": 0.05, "optim.lr": 1e-3, "sched.lr": 2}
    assert run_name("search", "633f2a38", params) == (
        "search-633f2a38_alpha=0.312_temperature=0.05_optim.lr=0.001_sched.lr=2"
    )
    assert run_name("reference", "d2221_00000", {"loss.alpha": 0.0}) == "reference"
    assert run_name("search", "a", {"data.name": "x y/z"}) == "search-a_name=x-y-z"  # a file name
    folder = StudyFolder(Path("/s"))
    assert folder.tensorboard_run("reference", "r", {}) == Path("/s/tensorboard/reference")
    assert folder.ray_log == Path("/s/ray.log")


def test_atomic_write_gives_plain_permissions(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "a" / "x.txt", "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_plain_turns_numpy_scalars_into_python_values() -> None:
    assert type(plain(np.int64(3))) is int and type(plain(np.float32(0.5))) is float
    assert plain("x") == "x" and plain(None) is None and type(plain(np.bool_(True))) is bool


def test_best_epoch_and_is_better_agree_on_ties_and_modes() -> None:
    rows = [{"m": 0.2}, {"m": float("nan")}, {"m": 0.5}, {"m": 0.5}, {"m": 0.1}]
    assert best_epoch_index(rows, "m", "max") == 2  # the earliest of equal values
    assert best_epoch_index(rows, "m", "min") == 4
    assert best_epoch_index([{"x": 1.0}], "m", "max") is None
    assert is_better(0.5, None, "max") and not is_better(0.5, 0.5, "max") and is_better(1, 2, "min")
