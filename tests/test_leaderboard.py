"""Leaderboard rows: best epoch, ranking, explicit schema, atomic writes, merge, offline rebuild."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study.leaderboard import (
    LeaderboardError,
    build_rows,
    format_table,
    merge,
    oracle_lines,
    read_leaderboard,
    records_from_experiment,
    write_leaderboard,
)
from study.records import TrialRecord, best_epoch_index

REPO = Path(__file__).resolve().parents[1]
KINDS = {"loss.alpha": "float", "train.batch_size": "int", "loss.penalty_variant": "string"}


def history(vals: list[float], loss0: float = 1.0) -> list[dict[str, float]]:
    return [
        {"epoch": e, "val/ndcg@10": v, "val/mrr": v / 2, "train/loss": loss0 / e}
        for e, v in enumerate(vals, start=1)
    ]


def records() -> list[TrialRecord]:
    return [
        TrialRecord(
            "t_peak",
            params={"loss.alpha": 0.5, "train.batch_size": np.int64(128)},
            history=history([0.1, 0.4, 0.3, 0.2]),
            test_metrics={"test/ndcg@10": 0.35},
            wall_s=10.0,
            gpus=4.0,
            config={"loss": {"alpha": 0.5}},
            seed=1,
            versions={"torch": "2.13", "ray": "2.60.0"},
        ),
        TrialRecord(
            "t_ref",
            kind="reference",
            params={"loss.alpha": 0.0, "loss.penalty_variant": "reweight"},
            history=history([0.2, 0.25]),
            test_metrics={"test/ndcg@10": 0.2},
        ),
        TrialRecord(
            "t_stop",
            status="stopped_early",
            params={"loss.alpha": 3.0},
            history=history([0.05]),
            test_metrics={"test/ndcg@10": 0.9},  # must be dropped: no test pass when stopped
        ),
        TrialRecord(
            "t_err", status="error", error="CUDA out of memory", params={"loss.alpha": 1.0}
        ),
    ]


def table(mode: str = "max") -> pa.Table:
    return build_rows(records(), study="s", metric="val/ndcg@10", mode=mode, param_kinds=KINDS)  # type: ignore[arg-type]


def by_id(t: pa.Table) -> dict[str, dict[str, object]]:
    return {r["trial_id"]: r for r in t.to_pylist()}


def test_row_takes_best_epoch_not_last() -> None:
    row = by_id(table())["t_peak"]
    assert row["best_epoch"] == 2 and row["epochs"] == 4
    assert row["val/ndcg@10"] == 0.4 and row["val/mrr"] == 0.2 and row["train/loss"] == 0.5
    assert row["test/ndcg@10"] == 0.35 and row["gpu_s"] == 40.0
    assert json.loads(str(row["config"])) == {"loss": {"alpha": 0.5}}
    assert row["torch_version"] == "2.13" and row["optuna_version"] is None


def test_min_mode_picks_lowest_epoch_and_reverses_rank() -> None:
    rows = by_id(table("min"))
    assert rows["t_peak"]["best_epoch"] == 1
    assert [rows[t]["rank"] for t in ("t_stop", "t_peak", "t_ref")] == [1, 2, 3]


def test_rank_orders_by_metric_with_errors_last_and_null() -> None:
    t = table()
    assert t.column("trial_id").to_pylist() == ["t_peak", "t_ref", "t_stop", "t_err"]
    assert t.column("rank").to_pylist() == [1, 2, 3, None]
    rows = by_id(t)
    assert rows["t_err"]["best_epoch"] is None and rows["t_err"]["val/ndcg@10"] is None
    assert rows["t_err"]["error"] == "CUDA out of memory" and rows["t_err"]["epochs"] == 0


def test_stopped_early_has_no_test_metrics() -> None:
    rows = by_id(table())
    assert rows["t_stop"]["test/ndcg@10"] is None and rows["t_stop"]["val/ndcg@10"] == 0.05
    assert rows["t_ref"]["kind"] == "reference" and rows["t_ref"]["param.loss.alpha"] == 0.0


def test_explicit_schema_types() -> None:
    schema = table().schema
    assert schema.field("param.loss.alpha").type == pa.float64()
    assert schema.field("param.train.batch_size").type == pa.int64()
    assert schema.field("param.loss.penalty_variant").type == pa.string()
    for name in ("val/ndcg@10", "val/mrr", "train/loss", "test/ndcg@10", "wall_s", "gpu_s"):
        assert schema.field(name).type == pa.float64(), name
    for name in ("rank", "best_epoch", "epochs", "seed"):
        assert schema.field(name).type == pa.int64(), name
    names = schema.names
    assert names[:7] == ["rank", "study", "dataset", "trial_id", "kind", "status", "error"]
    assert names.index("val/ndcg@10") < names.index("train/loss") < names.index("test/ndcg@10")
    assert names[-4:] == [f"{p}_version" for p in ("torch", "transformers", "ray", "optuna")]
    assert schema.metadata[b"vlm2rec.metric"] == b"val/ndcg@10"


def test_bad_record_and_kinds_are_rejected() -> None:
    with pytest.raises(LeaderboardError, match=r"trial x: status 'done'"):
        TrialRecord("x", status="done")  # type: ignore[arg-type]
    with pytest.raises(LeaderboardError, match=r"param kinds .*complex"):
        build_rows([], study="s", metric="val/m", mode="max", param_kinds={"a": "complex"})


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-5, 5), st.just(math.nan)), min_size=0, max_size=12),
    st.sampled_from(["max", "min"]),
)
def test_best_epoch_index_matches_numpy(vals: list[float], mode: str) -> None:
    rows = [{"m": v} for v in vals]
    got = best_epoch_index(rows, "m", mode)
    arr = np.array(vals, dtype=float)
    if not np.isfinite(arr).any():
        assert got is None
        return
    filled = np.where(np.isfinite(arr), arr, -np.inf if mode == "max" else np.inf)
    assert got == int(np.argmax(filled) if mode == "max" else np.argmin(filled))  # first on ties


def test_write_read_roundtrip(tmp_path: Path) -> None:
    path = write_leaderboard(table(), tmp_path / "sub" / "leaderboard.parquet")
    back = read_leaderboard(path)
    assert back.equals(table()) and back.schema.metadata == table().schema.metadata


def test_failed_write_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_leaderboard(table(), tmp_path / "leaderboard.parquet")
    before = path.read_bytes()

    def half_write(tbl: pa.Table, where: object, **_: object) -> None:
        where.write(b"PAR1 half a file")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_write)
    with pytest.raises(LeaderboardError, match=rf"{path}: could not write leaderboard: disk full"):
        write_leaderboard(table("min"), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["leaderboard.parquet"]


def test_read_garbage_names_path(tmp_path: Path) -> None:
    bad = tmp_path / "leaderboard.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(LeaderboardError, match=str(bad)):
        read_leaderboard(bad)
    pq.write_table(pa.table({"x": [1]}), bad)
    with pytest.raises(LeaderboardError, match=r"missing leaderboard columns \['rank'"):
        read_leaderboard(bad)


def other_study() -> pa.Table:
    recs = [
        TrialRecord("t_peak", params={"loss.beta": 0.3}, history=history([0.5])),
        TrialRecord("u1", params={"loss.beta": 0.1}, history=history([0.3]), seed=7),
    ]
    return build_rows(
        recs, study="s2", metric="val/ndcg@10", mode="max", param_kinds={"loss.beta": "float"}
    )


def test_merge_fills_missing_columns_dedupes_and_reranks() -> None:
    updated = build_rows(
        [TrialRecord("t_err", params={"loss.alpha": 1.0}, history=history([0.45]))],
        study="s",
        metric="val/ndcg@10",
        mode="max",
        param_kinds={"loss.alpha": "float"},
    )
    merged = merge([table(), other_study(), updated])
    ids = list(
        zip(merged.column("study").to_pylist(), merged.column("trial_id").to_pylist(), strict=True)
    )
    assert ids[:4] == [("s2", "t_peak"), ("s", "t_err"), ("s", "t_peak"), ("s2", "u1")]
    assert merged.num_rows == 6  # the retried t_err replaced the failed one
    assert merged.column("rank").to_pylist() == [1, 2, 3, 4, 5, 6]
    rows = {(r["study"], r["trial_id"]): r for r in merged.to_pylist()}
    assert rows[("s2", "u1")]["param.loss.alpha"] is None and rows[("s2", "u1")]["seed"] == 7
    assert rows[("s", "t_ref")]["param.loss.beta"] is None
    assert merged.schema.names[0] == "rank"


def test_merge_needs_metric_when_tables_disagree() -> None:
    other = build_rows([], study="x", metric="val/mrr", mode="max", param_kinds={})
    with pytest.raises(LeaderboardError, match="different metrics"):
        merge([table(), other])
    reranked = merge([table(), other], metric="val/mrr", mode="min")
    assert reranked.column("trial_id").to_pylist() == ["t_stop", "t_ref", "t_peak", "t_err"]
    assert reranked.schema.metadata[b"vlm2rec.metric"] == b"val/mrr"
    with pytest.raises(LeaderboardError, match="no tables"):
        merge([])


def test_cli_merges_study_folders(tmp_path: Path) -> None:
    for name, t in (("s", table()), ("s2", other_study())):
        write_leaderboard(t, tmp_path / name / "leaderboard.parquet")
    out = tmp_path / "all.parquet"
    cmd = [sys.executable, "study/leaderboard.py", str(tmp_path / "s"), str(tmp_path / "s2")]
    proc = subprocess.run(
        [*cmd, "--top", "2", "--out", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and "val/ndcg@10" in lines[0] and "loss.alpha" in lines[0]
    assert lines[1].split()[:3] == ["1", "s2", "t_peak"]
    assert read_leaderboard(out).num_rows == 6
    bad = subprocess.run(
        [*cmd[:2], str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "nope: no such study folder" in bad.stderr


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_rebuild_from_tune_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import tune

    # Defined inside the test so cloudpickle ships it by value (tests/ is not importable on workers).
    def _trainable(config: dict[str, float]) -> None:
        alpha = config["loss.alpha"]
        if alpha >= 1.0:
            raise ValueError("exploded on purpose")
        epochs = 3 if alpha > 0 else 2
        for epoch in range(1, epochs + 1):
            metrics: dict[str, object] = {
                "epoch": epoch,
                "val/ndcg@10": 0.5 - abs(epoch - 2) * 0.1 + alpha,  # peaks at epoch 2
                "train/loss": 1.0 / epoch,
                "kind": "reference" if alpha == 0 else "search",
                "trial_status": "running",
            }
            if epoch == epochs:
                metrics.update({"test/ndcg@10": 0.42 + alpha, "trial_status": "completed"})
                metrics.update({"checkpoint_path": f"/ckpt/{alpha}", "git_sha": "abc"})
            tune.report(metrics)

    def run(name: str, alphas: list[float]) -> None:
        tune.Tuner(
            tune.with_resources(_trainable, {"CPU": 0.5}),
            param_space={"loss.alpha": tune.grid_search(alphas)},
            run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0),
        ).fit()

    # Tune's own loggers on (the shared Ray fixture and run_search turn them off) ...
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    run("exp", [0.0, 0.25, 1.0])
    # ... and off, as in a study: then only each trial's last report survives.
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    run("nologs", [0.25])
    assert not [*(tmp_path / "nologs").rglob("result.json")], "the loggers were not off"
    (only,), _ = records_from_experiment(tmp_path / "nologs")
    assert only.history and only.history[-1]["epoch"] == 3 and only.status == "completed"
    assert only.test_metrics == {"test/ndcg@10": pytest.approx(0.67)}
    recs, kinds = records_from_experiment(tmp_path / "exp")
    assert kinds == {"loss.alpha": "float"}
    t = build_rows(recs, study="exp", metric="val/ndcg@10", mode="max", param_kinds=kinds)
    rows = {r["param.loss.alpha"]: r for r in t.to_pylist()}
    assert rows[0.25]["best_epoch"] == 2 and rows[0.25]["epochs"] == 3 and rows[0.25]["rank"] == 1
    assert rows[0.25]["val/ndcg@10"] == pytest.approx(0.75)
    assert rows[0.25]["test/ndcg@10"] == pytest.approx(0.67)
    assert rows[0.25]["checkpoint_path"] == "/ckpt/0.25" and rows[0.25]["git_sha"] == "abc"
    assert rows[0.25]["wall_s"] is not None and rows[0.25]["wall_s"] > 0
    assert rows[0.0]["kind"] == "reference" and rows[0.0]["status"] == "completed"
    assert rows[1.0]["status"] == "error" and "exploded on purpose" in rows[1.0]["error"]
    assert rows[1.0]["rank"] is None
    # The CLI rebuilds the same folder offline (no leaderboard.parquet there yet).
    proc = subprocess.run(
        [sys.executable, "study/leaderboard.py", str(tmp_path / "exp")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split()[:2] == ["1", "search"]  # one study: no study column


def test_oracle_lines_show_the_generator_beside_the_trials() -> None:
    frame = pd.DataFrame(
        {
            "study": ["a", "a", "b"],
            "val/ndcg@10": [0.5, 0.2, 0.4],
            "val/oracle/ndcg@10": [0.63, 0.63, 0.7],
            "val/oracle/ndcg@10/text": [0.21, 0.21, 0.3],
            "val/oracle/ndcg@10/image": [0.22, 0.22, float("nan")],
        }
    )
    assert oracle_lines(frame, "val/ndcg@10") == [
        "oracles of a (val/ndcg@10): full 0.6300, text only 0.2100, image only 0.2200",
        "oracles of b (val/ndcg@10): full 0.7000, text only 0.3000",
    ]
    assert oracle_lines(frame, "val/mrr") == []  # no oracle of that metric: nothing to show
    assert oracle_lines(frame.drop(columns="study"), "val/ndcg@10")[0].startswith("oracles (val/")


def test_printouts_show_the_sampled_protocol_beside_full_ranking() -> None:
    table = pa.table(
        {
            "rank": [1, 2],
            "kind": ["search", "reference"],
            "status": ["completed", "completed"],
            "val/ndcg@10": [0.32, 0.21],
            "val/sampled100/hit@10": [0.81, 0.82],
            "val/sampled100/ndcg@10": [0.50, 0.42],
            "val/sampled100/hit@20": [0.9, 0.9],  # @20 stays in the Parquet only
            "best_epoch": [6, 6],
        }
    )
    header = format_table(table, "val/ndcg@10", top=5).splitlines()[0].split()
    assert header[header.index("val/ndcg@10") + 1 :][:2] == [
        "val/sampled100/hit@10",
        "val/sampled100/ndcg@10",
    ]
    assert "val/sampled100/hit@20" not in header
    plain = format_table(table.drop_columns(["val/sampled100/hit@10"]), "val/ndcg@10", top=5)
    assert "hit@10" not in plain  # nothing invented where a study did not report it
