"""Tune callbacks that run on the study driver: trial records, the leaderboard and TensorBoard.

Everything a study shows is written here, on the driver, from the metrics the trials report, so only
Train checkpoints need shared storage (docs/ARCHITECTURE.md, "Where a study's files live"):

* ``trials/<trial_id>.json``: the trial's :class:`~study.records.TrialRecord`, rewritten
  atomically after each report, so a killed driver loses nothing; a report that never reached
  Tune is taken from the trial's last checkpoint when it ends (:func:`lost_reports`);
* ``configs/<trial_id>.json``: its resolved run config, the input of its reproducing command;
* ``leaderboard.parquet``: rebuilt from all trial records whenever a trial ends;
* ``tensorboard/<run>/``: one run per trial, named for what it is (``reference``,
  ``search-<trial id>_alpha=0.312_...``: ``records.run_name``), with the per-epoch curves
  (``train/*``, ``val/*``) under exactly the metric names; when the trial ends, the hparams
  plugin's summary (params, kind, status; the study metric first among the metrics), the best
  epoch's ``val/*`` in the sub-run ``<run>/best`` (the plugin reads its values there) and a
  description with the test metrics;
* the console: one line per report and per trial end, on the driver's
  :class:`~study.progress.StudyProgress`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs
from ray.tune import Callback

from study.bridge import CHECKPOINT_PATH_KEY
from study.leaderboard import build_rows, write_leaderboard
from study.progress import StudyProgress
from study.records import (
    Kind,
    Status,
    StudyFolder,
    TrialRecord,
    best_epoch_index,
    plain,
    read_records,
    trial_label,
    write_record,
)
from study.search_space import trial_config
from vlm2rec.atomic import atomic_write_text
from vlm2rec.checkpoint import PROGRESS, read_progress
from vlm2rec.config import config_hash, to_dict
from vlm2rec.reporting import TensorBoardReporter

__all__ = [
    "StudyContext",
    "StudyRecorder",
    "follow",
    "hparams_order",
    "lost_reports",
    "rebuild_leaderboard",
]

#: Reported keys kept in a trial's history: the metrics (docs/ARCHITECTURE.md, "One name per
#: number") and bookkeeping.
_KEPT_PREFIXES = ("train/", "val/", "test/", "time/")
#: Reported keys drawn as TensorBoard curves: the per-epoch metrics. ``time/epoch_s`` stays in the
#: records, and ``test/*`` (once per trial) goes to the run's description: TensorBoard's time
#: series opens the first two groups of cards, which are then ``train`` and ``val``.
_CURVE_PREFIXES = ("train/", "val/")

#: The console of each study this process drives, by study folder. Tune restores a resumed
#: study's callbacks from its saved state, so the driver cannot hand a restored recorder its
#: console; recorders look it up here (:func:`follow`).
_PROGRESS: dict[str, StudyProgress] = {}


def hparams_order(metric: str, names: Iterable[str]) -> tuple[str, ...]:
    """The hparams table's metric columns: the study ``metric``, its per-view variants, the other
    ranking metrics (``@k``, ``mrr``, oracles, sampled), then the diagnostics; by name within."""

    def key(name: str) -> tuple[int, str]:
        part = name.split("/")[1] if "/" in name else name
        ranking = "@" in name or part == "mrr"
        return (
            0 if name == metric else 1 if name.startswith(metric + "/") else 2 if ranking else 3
        ), name

    return tuple(sorted(set(names) | {metric}, key=key))


def follow(study_dir: str | Path, progress: StudyProgress) -> None:
    """Print the reports of the study in ``study_dir`` on ``progress`` (its recorders in this
    process, restored ones included)."""
    _PROGRESS[str(Path(study_dir))] = progress


@dataclasses.dataclass(frozen=True)
class StudyContext:
    """Facts every trial record of a study shares."""

    study: str  #: study name
    study_dir: str  #: <storage>/<study>
    metric: str  #: study metric (a val/ key)
    mode: Literal["max", "min"]  #: max | min
    param_kinds: dict[str, str]  #: {searched path: float|int|string|bool}
    base: dict[str, Any]  #: base run config (dict)
    gpus_per_trial: float  #: workers x GPUs per worker
    data_fingerprint: str  #: meta.json fingerprint of the dataset
    git_sha: str | None  #: code version of the driver
    versions: dict[str, str]  #: torch, transformers, ray, optuna
    #: the hparams table's metric columns (``val/*``, the study metric first); empty in the state
    #: of a study started before they were recorded (the recorder then uses each trial's own)
    hparams_metrics: tuple[str, ...] = ()
    #: Train checkpoint storage (local folder or URI); empty in the state of an older study
    train_storage: str = ""

    @property
    def folder(self) -> StudyFolder:
        """The study folder's layout."""
        return StudyFolder(Path(self.study_dir))


def _metrics(result: Mapping[str, Any]) -> dict[str, float]:
    row = {
        k: float(v)
        for k, v in result.items()
        if k.startswith(_KEPT_PREFIXES) and isinstance(v, int | float) and not isinstance(v, bool)
    }
    row["epoch"] = float(result.get("epoch", result.get("training_iteration", 0)))
    return row


def rebuild_leaderboard(ctx: StudyContext) -> Path:
    """Rebuild ``leaderboard.parquet`` from the trial records (atomic replace)."""
    table = build_rows(
        read_records(ctx.folder),
        study=ctx.study,
        metric=ctx.metric,
        mode=ctx.mode,
        param_kinds=ctx.param_kinds,
    )
    return write_leaderboard(table, ctx.folder.leaderboard)


class StudyRecorder(Callback):
    """Records each trial of one Tuner (``kind`` = reference or search) on the driver."""

    def __init__(self, ctx: StudyContext, kind: Kind) -> None:
        self.ctx, self.kind = ctx, kind
        self._boards: dict[str, TensorBoardReporter] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; open writers are not state.
        return {**self.__dict__, "_boards": {}}

    # ---- trial records ----------------------------------------------------------------------
    def _record(self, trial: Any) -> TrialRecord:
        """The trial's record so far: from its file (the driver may have restarted since), or a
        new one, whose resolved run config is written beside it."""
        path = self.ctx.folder.record(trial.trial_id)
        if path.exists():
            return TrialRecord.from_json(path.read_text())
        params = {k: plain(v) for k, v in trial.config.items()}
        cfg = trial_config(self.ctx.base, params)
        config_file = self.ctx.folder.config(trial.trial_id)
        atomic_write_text(config_file, json.dumps(to_dict(cfg), indent=1, sort_keys=True))
        return TrialRecord(
            trial_id=trial.trial_id,
            kind=self.kind,
            params=params,
            config=to_dict(cfg),
            seed=cfg.seed,
            config_hash=config_hash(cfg),
            command=f"python -m vlm2rec.cli train --config {config_file} --out runs/{trial.trial_id}",
            gpus=self.ctx.gpus_per_trial,
            data_fingerprint=self.ctx.data_fingerprint,
            git_sha=self.ctx.git_sha,
            versions=self.ctx.versions,
        )

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        row = _metrics(result)
        record = dataclasses.replace(
            self._record(trial).with_report(row),
            wall_s=float(result.get("time_total_s", 0.0)),
        )
        if result.get(CHECKPOINT_PATH_KEY):
            record = dataclasses.replace(record, checkpoint_path=str(result[CHECKPOINT_PATH_KEY]))
        write_record(self.ctx.folder, record)
        self._board(record).report(_curves(row), int(row["epoch"]), None)
        label = trial_label(self.kind, trial.trial_id)
        seconds = float(result.get("time_total_s", 0.0)) or None
        self._progress().epoch(trial.trial_id, label, int(row["epoch"]), row, seconds)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        for row in lost_reports(record, self.ctx.train_storage):
            record = record.with_report(row)
            self._board(record).report(_curves(row), int(row["epoch"]), None)
        last = record.history[-1] if record.history else {}
        test = {k: v for k, v in last.items() if k.startswith("test/")}
        # fit() reports test/* only after its last epoch: without them the scheduler stopped it.
        status: Status = "completed" if test else "stopped_early"
        self._finish(dataclasses.replace(record, status=status, test_metrics=test or None))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error_file = getattr(trial, "error_file", None)
        text = Path(error_file).read_text() if error_file and Path(error_file).exists() else ""
        error = _error_summary(text) or "trial failed (no error file)"
        record = dataclasses.replace(self._record(trial), status="error", error=error)
        self._finish(record, f" (full error: {error_file})" if text else "")

    def _finish(self, record: TrialRecord, where: str = "") -> None:
        write_record(self.ctx.folder, record)
        self._hparams(record)
        rebuild_leaderboard(self.ctx)
        label = trial_label(record.kind, record.trial_id)
        self._progress().finished(record.trial_id, label, self._ending(record) + where)

    def _ending(self, record: TrialRecord) -> str:
        """How a trial ended, in words: its status, its last epoch and its best value."""
        if record.status == "error":
            return f"error: {record.error}"
        i = best_epoch_index(record.history, self.ctx.metric, self.ctx.mode)
        best = (
            f"best {self.ctx.metric} {record.history[i][self.ctx.metric]:.4f} at epoch "
            f"{int(record.history[i]['epoch'])}"
            if i is not None
            else f"no {self.ctx.metric} reported"
        )
        last = int(record.history[-1]["epoch"]) if record.history else 0
        if record.status == "stopped_early":
            return f"stopped early after epoch {last}: {best}"
        return f"completed: {best}"

    def _progress(self) -> StudyProgress:
        """The console of this study (:func:`follow`); one of its own when nobody set one."""
        key = str(Path(self.ctx.study_dir))
        if key not in _PROGRESS:
            epochs = int(self.ctx.base.get("train", {}).get("epochs", 0))
            _PROGRESS[key] = StudyProgress(
                total=0, epochs=epochs, metric=self.ctx.metric, mode=self.ctx.mode
            )
        return _PROGRESS[key]

    # ---- TensorBoard ------------------------------------------------------------------------
    def _board(self, record: TrialRecord) -> TensorBoardReporter:
        if record.trial_id not in self._boards:
            run = self.ctx.folder.tensorboard_run(record.kind, record.trial_id, record.params)
            self._boards[record.trial_id] = TensorBoardReporter(run)
        return self._boards[record.trial_id]

    def _hparams(self, record: TrialRecord) -> None:
        """The hparams plugin's summary: params, kind and status, and the best epoch's ``val/*``
        (none for a trial that failed before its first report: it still shows up, as failed);
        the run's description says what the trial was, how it ended and its test metrics."""
        i = best_epoch_index(record.history, self.ctx.metric, self.ctx.mode)
        best = record.history[i] if i is not None else {}
        metrics = {k: v for k, v in best.items() if k.startswith("val/")}
        names = self.ctx.hparams_metrics or hparams_order(self.ctx.metric, metrics)
        params = {k: v for k, v in record.params.items() if isinstance(v, int | float | str | bool)}
        params.update({"kind": record.kind, "status": record.status})
        board = self._board(record)
        board.describe(self._description(record))
        board.hparams(
            params,
            metrics,
            int(best.get("epoch", 0)),
            metric_names=names,
            failed=record.status == "error",
        )
        board.close()
        self._boards.pop(record.trial_id, None)

    def _description(self, record: TrialRecord) -> str:
        """Markdown: the trial's id, kind, status, params, best epoch and test metrics."""
        lines = [
            f"**{trial_label(record.kind, record.trial_id)}** (Tune trial `{record.trial_id}`, "
            f"{record.kind}): {self._ending(record)}",
            "",
            "| parameter | value |",
            "| --- | --- |",
            *(f"| `{k}` | {v} |" for k, v in record.params.items()),
        ]
        if record.test_metrics:
            lines += [
                "",
                "test split, with the weights of the best checkpoint:",
                "",
                "| metric | value |",
                "| --- | --- |",
                *(f"| `{k}` | {v:.4f} |" for k, v in sorted(record.test_metrics.items())),
            ]
        return "\n".join(lines)


def lost_reports(record: TrialRecord, train_storage: str) -> list[dict[str, float]]:
    """The reports of epochs missing from ``record`` that its last checkpoint holds.

    Every epoch is reported, so a gap in epochs ``1..last`` is a report that never reached Tune:
    the driver stopped (Ctrl-C, SIGTERM, a kill) after the worker had reported it and saved its
    checkpoint, and the rerun resumed the Train run from that checkpoint. The checkpoint's
    ``progress.json`` keeps the history of every epoch it trained, under the reported names.
    An unreadable checkpoint leaves the record as it is: the gap is then only in its curves.
    """
    epochs = {int(row["epoch"]) for row in record.history}
    if not (record.checkpoint_path and train_storage) or epochs == set(
        range(1, max(epochs, default=0) + 1)
    ):
        return []
    try:
        history = _checkpoint_history(record.checkpoint_path, train_storage)
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [_metrics(row) for row in history if int(row["epoch"]) not in epochs]


def _checkpoint_history(path: str, train_storage: str) -> list[dict[str, float]]:
    """The ``progress.json`` history of the Train checkpoint at ``path`` (a path in the file
    system of ``train_storage``, as Train's ``Checkpoint.path`` gives it)."""
    fs = (
        pyarrow.fs.FileSystem.from_uri(train_storage)[0]
        if "://" in train_storage
        else pyarrow.fs.LocalFileSystem()
    )
    with fs.open_input_stream(f"{path}/{PROGRESS}") as stream:
        return read_progress(stream.read()).history


def _curves(row: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k.startswith(_CURVE_PREFIXES)}


def _error_summary(text: str) -> str:
    """The outermost exception line and the last line of a Tune error file.

    Ray wraps a worker's exception (``WorkerGroupError: Training failed due to worker errors``) and
    truncates the middle of the worker traceback; its last line is the end of the worker's own
    message (e.g. ``NonFiniteLossError: non-finite loss at epoch 1, step 2: ...``).
    """
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    outer = next((ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", ln)), "")
    parts = [outer, lines[-1]] if outer and outer != lines[-1] else [lines[-1]]
    return " | ".join(parts)[:2000]
