"""The study leaderboard: one Parquet row per trial with an explicit schema, written atomically.

Pure core: trial records (``study/records.py``) -> :func:`build_rows` (each trial at its best
epoch, ranked) -> ``pa.Table`` -> :func:`write_leaderboard` (``vlm2rec.atomic``: readers only ever
see the old or the new file). :func:`merge` joins tables of several studies or rebuilds; the metric
and mode a table is ranked by travel in its schema metadata (:func:`ranked_by`).

Offline CLI (no running cluster)::

    python study/leaderboard.py STUDY_DIR... [--top K] [--metric M] [--mode max|min]
                                [--rebuild] [--out merged.parquet]

Each ``STUDY_DIR`` gives its ``leaderboard.parquet`` (or, with ``--rebuild`` or when there is none,
the Tune experiment state via ``ray.tune.ExperimentAnalysis``); a ``.parquet`` path is read as is.

Reading a Tune experiment assumes each trial reported, per epoch, its metrics (``val/*``,
``train/*``; ``test/*`` in the final report), a 1-based ``epoch`` and optionally ``kind``
(reference|search), ``trial_status`` (completed|stopped_early) and the trial facts named in
:data:`FACT_KEYS`. Tune's ``time_total_s`` gives ``wall_s``; the trial config gives the params.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if __package__ in (None, ""):  # `python study/leaderboard.py`: see study/_script.py
    import _script  # noqa: F401

from study.records import (
    VERSION_PACKAGES,
    LeaderboardError,
    StudyFolder,
    TrialRecord,
    best_epoch_index,
    finite,
    plain,
    record_columns,
)
from vlm2rec.atomic import atomic_write

__all__ = [
    "FACT_KEYS",
    "META_METRIC",
    "META_MODE",
    "LeaderboardError",
    "build_rows",
    "format_table",
    "load_study_dir",
    "merge",
    "ranked_by",
    "read_leaderboard",
    "records_from_experiment",
    "summary",
    "write_leaderboard",
]

#: Schema metadata keys holding the metric and mode a leaderboard is ranked by.
META_METRIC, META_MODE = b"vlm2rec.metric", b"vlm2rec.mode"
_ARROW = {"float": pa.float64(), "int": pa.int64(), "string": pa.string(), "bool": pa.bool_()}
_FRONT, _BACK = record_columns()
#: Columns that identify a trial (record fields after the three the leaderboard adds); ``rank``
#: counts within a dataset (1 = the best trial on that dataset).
_HEAD = [
    pa.field("rank", pa.int64()),
    pa.field("study", pa.string()),
    pa.field("dataset", pa.string()),
    *_FRONT,
]
#: What a leaderboard file must hold (``dataset`` came later: older files lack it).
_REQUIRED = [f.name for f in _HEAD if f.name != "dataset"]
#: Columns after the metrics: how the trial ran (two derived from its record, then record fields).
_TAIL = [pa.field("epochs", pa.int64()), pa.field("gpu_s", pa.float64()), *_BACK]
#: Reported (non-metric) keys copied into the record when rebuilding from a Tune experiment: the
#: record's text facts (the versions come from their own ``<package>_version`` keys).
FACT_KEYS = tuple(
    f.name for f in _BACK if f.type == pa.string() and not f.name.endswith("_version")
)


def _metric_names(records: Sequence[TrialRecord]) -> tuple[list[str], list[str]]:
    """(history metric columns, test metric columns): numeric keys, val/ first, then the rest."""
    hist = {k for r in records for row in r.history for k, v in row.items() if finite(v)}
    hist.discard("epoch")
    test = {k for r in records for k in (r.test_metrics or {})}
    return sorted(hist, key=lambda k: (not k.startswith("val/"), k)), sorted(test - hist)


def _schema(param_kinds: Mapping[str, str], hist: list[str], test: list[str]) -> pa.Schema:
    bad = {p: k for p, k in param_kinds.items() if k not in _ARROW}
    if bad:
        raise LeaderboardError(f"param kinds {bad}: expected one of {sorted(_ARROW)}")
    fields = [*_HEAD]
    fields += [pa.field(f"param.{p}", _ARROW[k]) for p, k in sorted(param_kinds.items())]
    fields.append(pa.field("best_epoch", pa.int64()))
    fields += [pa.field(n, pa.float64()) for n in [*hist, *test]]
    return pa.schema([*fields, *_TAIL])


def _param_value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    return {"float": float, "int": int, "string": str, "bool": bool}[kind](plain(value))


def _row(rec: TrialRecord, study: str, metric: str, mode: str, kinds: Mapping[str, str]) -> dict:
    best = best_epoch_index(rec.history, metric, mode)
    chosen = rec.history[best] if best is not None else {}
    row: dict[str, Any] = {
        "study": study,
        "dataset": rec.dataset,
        **rec.columns(),
        "best_epoch": None if best is None else int(chosen.get("epoch", best + 1)),
        "epochs": max((int(h.get("epoch", i + 1)) for i, h in enumerate(rec.history)), default=0),
        "gpu_s": None if rec.wall_s is None else rec.gpus * rec.wall_s,
    }
    row.update({f"param.{p}": _param_value(rec.params.get(p), k) for p, k in kinds.items()})
    row.update({k: float(v) for k, v in chosen.items() if k != "epoch" and finite(v)})
    # Test scores exist only for trials that ran to the end: a stopped trial has no test pass.
    if rec.status == "completed":
        row.update({k: float(v) for k, v in (rec.test_metrics or {}).items() if finite(v)})
    return row


def _ranked(table: pa.Table, metric: str, mode: str) -> pa.Table:
    """Fill ``rank`` (1 = best by metric among the trials on the same dataset; errors and a
    missing metric get null) and sort by dataset, then rank.

    Scores of different datasets are not comparable, so a table merged across datasets ranks
    each dataset's trials on their own; a table of one dataset is ranked as a whole.
    """
    n = table.num_rows
    values: list[Any] = (
        table.column(metric).to_pylist() if metric in table.column_names else [None] * n
    )
    status, ids = table.column("status").to_pylist(), table.column("trial_id").to_pylist()
    groups = table.column("dataset").to_pylist() if "dataset" in table.column_names else [None] * n
    sign = -1.0 if mode == "max" else 1.0
    rank: list[int | None] = [None] * n
    order: list[int] = []
    for group in sorted(set(groups), key=lambda g: (g is None, g or "")):  # unknown dataset last
        rows = [i for i in range(n) if groups[i] == group]
        ok = [i for i in rows if status[i] != "error" and finite(values[i])]
        ok.sort(key=lambda i: (sign * float(values[i]), ids[i]))  # ties: by trial id, deterministic
        for r, i in enumerate(ok, start=1):
            rank[i] = r
        order += ok + [i for i in rows if rank[i] is None]
    idx = table.schema.get_field_index("rank")
    table = table.set_column(idx, pa.field("rank", pa.int64()), pa.array(rank, pa.int64()))
    meta = {
        **(table.schema.metadata or {}),
        META_METRIC: metric.encode(),
        META_MODE: mode.encode(),
    }
    return table.take(pa.array(order, pa.int64())).replace_schema_metadata(meta)


def build_rows(
    records: Iterable[TrialRecord],
    *,
    study: str,
    metric: str,
    mode: Literal["max", "min"],
    param_kinds: Mapping[str, str],
) -> pa.Table:
    """Leaderboard table: each trial at its BEST epoch by ``metric``/``mode``, ranked.

    ``param_kinds`` maps each searched path to ``float|int|string|bool``
    (``SearchSpec.param_kinds()``); the study metric and mode are kept in the schema metadata so
    :func:`merge` can re-rank.
    """
    if mode not in ("max", "min"):
        raise LeaderboardError(f"mode {mode!r}: expected max or min")
    records = list(records)
    schema = _schema(param_kinds, *_metric_names(records))
    rows = [_row(r, study, metric, mode, param_kinds) for r in records]
    table = pa.Table.from_pylist(rows, schema=schema)
    return _ranked(table, metric, mode)


def _column_order(schema: pa.Schema) -> list[str]:
    names = schema.names
    head, tail = [f.name for f in _HEAD], [f.name for f in _TAIL]
    params = sorted(n for n in names if n.startswith("param."))
    fixed = {*head, *tail, *params, "best_epoch"}
    metrics = sorted(
        (n for n in names if n not in fixed), key=lambda k: (not k.startswith("val/"), k)
    )
    tests = [n for n in metrics if n.startswith("test/")]
    metrics = [n for n in metrics if not n.startswith("test/")]
    order = [*head, *params, "best_epoch", *metrics, *tests, *tail]
    return [n for n in order if n in names]


def merge(
    tables: Sequence[pa.Table], *, metric: str | None = None, mode: str | None = None
) -> pa.Table:
    """One table from several (missing columns become null), later duplicates of a
    ``(study, trial_id)`` replacing earlier ones, re-ranked by ``metric``/``mode`` (default: the
    one the tables were built with; an error if they disagree)."""
    if not tables:
        raise LeaderboardError("merge: no tables given")
    metas = {
        ((t.schema.metadata or {}).get(META_METRIC), (t.schema.metadata or {}).get(META_MODE))
        for t in tables
    }
    if metric is None or mode is None:
        if len(metas) != 1 or None in next(iter(metas)):
            raise LeaderboardError(
                f"merge: tables rank by different metrics {metas}: pass metric and mode"
            )
        stored_metric, stored_mode = next(iter(metas))
        metric = metric or stored_metric.decode()  # type: ignore[union-attr]
        mode = mode or stored_mode.decode()  # type: ignore[union-attr]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise LeaderboardError(f"merge: column types disagree: {exc}") from None
    keys = list(
        zip(table.column("study").to_pylist(), table.column("trial_id").to_pylist(), strict=True)
    )
    last = {k: i for i, k in enumerate(keys)}
    table = table.take(pa.array(sorted(last.values()), pa.int64()))
    return _ranked(table.select(_column_order(table.schema)), metric, mode)


def write_leaderboard(table: pa.Table, path: str | Path) -> Path:
    """Write ``table`` to ``path`` atomically: on any failure the previous file stays intact.

    A failure while writing (a full disk) is a :class:`LeaderboardError` naming the path; a folder
    where no file can be made stays the ``OSError`` that names it.
    """

    def write(fh: BinaryIO) -> None:
        try:
            pq.write_table(table, fh)
        except Exception as exc:
            raise LeaderboardError(f"{path}: could not write leaderboard: {exc}") from exc

    return atomic_write(path, write)


def read_leaderboard(path: str | Path) -> pa.Table:
    """Read a leaderboard written by :func:`write_leaderboard`."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise LeaderboardError(f"{path}: not a readable leaderboard: {exc}") from None
    missing = [name for name in _REQUIRED if name not in table.column_names]
    if missing:
        raise LeaderboardError(f"{path}: missing leaderboard columns {missing}")
    return table


def ranked_by(table: pa.Table) -> tuple[str, str]:
    """(metric, mode) a leaderboard is ranked by, from its schema metadata; ``val/ndcg@10``,
    ``max`` for a table that does not say."""
    meta = table.schema.metadata or {}
    return meta.get(META_METRIC, b"val/ndcg@10").decode(), meta.get(META_MODE, b"max").decode()


def oracle_lines(frame: pd.DataFrame, metric: str) -> list[str]:
    """One line per study: the generator's oracles of ``metric`` on the study's users (synthetic
    data only; every trial of a study scores the same users, so the first row speaks for all)."""
    key = metric.replace("/", "/oracle/", 1)
    if key not in frame.columns:
        return []
    lines = []
    groups = frame.groupby("study", sort=False) if "study" in frame.columns else [("", frame)]
    for name, rows in groups:
        row = rows.iloc[0]
        views = [(label, row.get(key + sfx)) for label, sfx in _ORACLE_VIEWS]
        shown = ", ".join(f"{label} {v:.4f}" for label, v in views if pd.notna(v))
        lines.append(f"oracles{f' of {name}' if name else ''} ({metric}): {shown}")
    return lines


_ORACLE_VIEWS = (("full", ""), ("text only", "/text"), ("image only", "/image"))
_SAMPLED = re.compile(r"val/sampled\d+/(hit|ndcg)@10")


def _sampled_columns(names: Sequence[str]) -> list[str]:
    """The paper's protocol at 10 (``val/sampled{N}/hit@10``, ``.../ndcg@10``) where a study
    reports it: shown beside full ranking, never instead."""
    return [n for n in names if _SAMPLED.fullmatch(n)]


def format_table(table: pa.Table, metric: str, top: int = 10) -> str:
    """A leaderboard as text: its ``top`` rows (of each dataset, when a merged table holds
    several), the ranking metric with its per-view variants, the searched params, and the
    generator's oracles. ``study`` and ``dataset`` are shown where they tell rows apart, and with
    several studies the ``trial_id`` (within one, ``rank`` and ``kind`` do)."""
    # Nullable integers: a rank or an epoch count stays 1, not 1.0, beside an unranked failure.
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    varying = [c for c in ("study", "dataset") if c in frame.columns and frame[c].nunique() > 1]
    ids = [*varying, "trial_id"] if "study" in varying else varying
    cols = ["rank", *ids, "kind", "status", metric, f"{metric}/text", f"{metric}/image"]
    cols += [*_sampled_columns(frame.columns), "best_epoch", "epochs", "wall_s"]
    cols += [c for c in frame.columns if c.startswith("param.")]
    cols.append(f"test/{metric.split('/', 1)[1]}")
    shown = frame[[c for c in cols if c in frame.columns]]
    # A merged table's rows come sorted by dataset: it shows each dataset's first rows.
    rows = shown.groupby("dataset", sort=False, dropna=False) if "dataset" in varying else shown
    return "\n".join([rows.head(top).to_string(index=False), *oracle_lines(frame, metric)])


def summary(folder: StudyFolder, metric: str, top: int = 10) -> str:
    """The top of a study's leaderboard and where its files are: what a study prints at its end."""
    table = format_table(read_leaderboard(folder.leaderboard), metric, top)
    return (
        f"{table}\n\nleaderboard:  {folder.leaderboard}\n"
        f"tensorboard:  tensorboard --logdir {folder.tensorboard}\n"
        f"optuna:       optuna-dashboard sqlite:///{folder.optuna_db}"
    )


# ----------------------------------------------------------------------------- offline rebuild


def _scalar_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "string" if isinstance(value, str) else None


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Keep what a trial reported itself; drop NaN holes of rows that lacked a key."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def _record_from_trial(trial: Any, rows: list[dict[str, Any]]) -> TrialRecord:
    last = rows[-1] if rows else {}
    history = [
        {k: v for k, v in r.items() if (k == "epoch" or k.startswith(("val/", "train/")))}
        for r in rows
    ]
    test = {k: v for k, v in last.items() if k.startswith("test/") and finite(v)} or None
    error = None
    if trial.status == "ERROR":
        status: str = "error"
        text = trial.get_error() or "trial failed (no error file)"
        error = [line for line in str(text).splitlines() if line.strip()][-1]
    elif last.get("trial_status") in ("completed", "stopped_early"):
        status = str(last["trial_status"])
    else:
        status = "completed" if test else "stopped_early"
    config = {k: plain(v) for k, v in trial.config.items()}
    params = {k: v for k, v in config.items() if k != "kind" and _scalar_kind(v)}
    facts = {k: last[k] for k in FACT_KEYS if isinstance(last.get(k), str)}
    return TrialRecord(
        trial_id=str(trial.trial_id),
        kind="reference" if (last.get("kind") or config.get("kind")) == "reference" else "search",
        status=status,  # type: ignore[arg-type]
        params=params,
        history=history,
        test_metrics=test,
        error=error,
        wall_s=float(last["time_total_s"]) if finite(last.get("time_total_s")) else None,
        gpus=float(last["gpus"]) if finite(last.get("gpus")) else 0.0,
        seed=int(params["seed"]) if isinstance(params.get("seed"), int) else None,
        versions={p: str(last[f"{p}_version"]) for p in VERSION_PACKAGES if f"{p}_version" in last},
        **facts,
    )


def records_from_experiment(path: str | Path) -> tuple[list[TrialRecord], dict[str, str]]:
    """Trial records and ``{param path: kind}`` from a Tune experiment folder, offline."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(str(path))
    except (ValueError, OSError) as exc:
        raise LeaderboardError(f"{path}: not a Tune experiment folder: {exc}") from None
    records: list[TrialRecord] = []
    kinds: dict[str, str] = {}
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        rows = [] if frame is None else [_clean_row(r) for r in frame.to_dict("records")]
        if not rows and trial.last_result:
            # Tune's JSON/CSV loggers off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1): only the last
            # report survives in the experiment state, so it stands for the whole history.
            rows = [_clean_row(trial.last_result)]
        rec = _record_from_trial(trial, rows)
        records.append(rec)
        for k, v in rec.params.items():
            kind = _scalar_kind(v)
            # A float and an int choice of the same param share a float column.
            kinds[k] = "float" if {kinds.get(k), kind} == {"float", "int"} else kind or "string"
    return records, kinds


def load_study_dir(path: str | Path, *, metric: str, mode: str, rebuild: bool = False) -> pa.Table:
    """A study folder's leaderboard: its ``leaderboard.parquet``, or rebuilt from Tune state."""
    path = Path(path)
    if path.suffix == ".parquet":
        return read_leaderboard(path)
    if not path.is_dir():
        raise LeaderboardError(f"{path}: no such study folder")
    stored = StudyFolder(path).leaderboard
    if stored.exists() and not rebuild:
        return read_leaderboard(stored)
    records, kinds = records_from_experiment(path)
    return build_rows(records, study=path.name, metric=metric, mode=mode, param_kinds=kinds)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point (``prog``: the name usage lines show); exit 2 for a bad input."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Rebuild and merge study leaderboards offline."
    )
    parser.add_argument("paths", nargs="+", help="study folders or leaderboard .parquet files")
    parser.add_argument(
        "--top", type=int, default=20, help="rows to print (per dataset, when there are several)"
    )
    parser.add_argument("--metric", default="val/ndcg@10", help="ranking metric")
    parser.add_argument("--mode", choices=["max", "min"], default="max")
    parser.add_argument("--rebuild", action="store_true", help="ignore leaderboard.parquet files")
    parser.add_argument("--out", type=Path, help="write the merged leaderboard here")
    args = parser.parse_args(argv)
    try:
        tables = [
            load_study_dir(p, metric=args.metric, mode=args.mode, rebuild=args.rebuild)
            for p in args.paths
        ]
        table = merge(tables, metric=args.metric, mode=args.mode)
        if args.out:
            write_leaderboard(table, args.out)
    except LeaderboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(table, args.metric, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
