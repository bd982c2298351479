"""Tune callbacks that run on the study driver: trial records, the leaderboard and TensorBoard.

Everything a study shows is written here, on the driver, from the metrics the trials report, so only
Train checkpoints need shared storage (DESIGN.md "Where a study's files live"):

* ``trials/<trial_id>.json``: the trial's kind, params, resolved run config, every per-epoch report,
  status and error; rewritten atomically after each report, so a killed driver loses nothing;
* ``leaderboard.parquet``: rebuilt from all trial records whenever a trial ends;
* ``tensorboard/<trial_id>/``: per-epoch scalars under exactly the metric names, and the hparams
  plugin's summary (searched params + best metrics) when the trial ends.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ray.tune import Callback

from study.leaderboard import TrialRecord, build_rows, write_leaderboard

__all__ = ["StudyContext", "StudyRecorder", "load_records", "rebuild_leaderboard"]

#: Reported keys kept in a trial's history: metrics (DESIGN.md rule 2) and bookkeeping.
_KEPT_PREFIXES = ("train/", "val/", "test/", "time/")


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


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _metrics(result: Mapping[str, Any]) -> dict[str, float]:
    row = {
        k: float(v)
        for k, v in result.items()
        if k.startswith(_KEPT_PREFIXES) and isinstance(v, int | float) and not isinstance(v, bool)
    }
    row["epoch"] = float(result.get("epoch", result.get("training_iteration", 0)))
    return row


def load_records(study_dir: str | Path) -> list[TrialRecord]:
    """Every ``trials/*.json`` of a study folder as :class:`TrialRecord` (the offline path too)."""
    fields = {f.name for f in dataclasses.fields(TrialRecord)}
    records = []
    for path in sorted(Path(study_dir, "trials").glob("*.json")):
        data = json.loads(path.read_text())
        records.append(TrialRecord(**{k: v for k, v in data.items() if k in fields}))
    return records


def rebuild_leaderboard(ctx: StudyContext) -> Path:
    """Rebuild ``leaderboard.parquet`` from the trial records (atomic replace)."""
    table = build_rows(
        load_records(ctx.study_dir),
        study=ctx.study,
        metric=ctx.metric,
        mode=ctx.mode,
        param_kinds=ctx.param_kinds,
    )
    return write_leaderboard(table, Path(ctx.study_dir) / "leaderboard.parquet")


class StudyRecorder(Callback):
    """Records each trial of one Tuner (``kind`` = reference or search) on the driver."""

    def __init__(self, ctx: StudyContext, kind: str) -> None:
        self.ctx, self.kind = ctx, kind
        self._writers: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; open writers are not state.
        return {**self.__dict__, "_writers": {}}

    # ---- trial records ----------------------------------------------------------------------
    def _path(self, trial_id: str) -> Path:
        return Path(self.ctx.study_dir, "trials", f"{trial_id}.json")

    def _record(self, trial: Any) -> dict[str, Any]:
        path = self._path(trial.trial_id)
        if path.exists():
            record: dict[str, Any] = json.loads(path.read_text())
            return record
        from study.driver import resolve_config  # Ray-free at import of this module's users
        from vlm2rec.config import config_hash, to_dict

        params = {k: v.item() if hasattr(v, "item") else v for k, v in trial.config.items()}
        cfg = resolve_config(self.ctx.base, params)
        config_file = Path(self.ctx.study_dir, "configs", f"{trial.trial_id}.json")
        _atomic_json(config_file, to_dict(cfg))
        return {
            "trial_id": trial.trial_id,
            "kind": self.kind,
            "status": "completed",
            "params": params,
            "history": [],
            "config": to_dict(cfg),
            "seed": cfg.seed,
            "config_hash": config_hash(cfg),
            "command": f"python -m vlm2rec.cli train --config {config_file} --out runs/{trial.trial_id}",
            "gpus": self.ctx.gpus_per_trial,
            "data_fingerprint": self.ctx.data_fingerprint,
            "git_sha": self.ctx.git_sha,
            "versions": self.ctx.versions,
        }

    def _save(self, record: dict[str, Any]) -> None:
        _atomic_json(self._path(record["trial_id"]), record)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        record = self._record(trial)
        row = _metrics(result)
        # A restored trial re-reports from its checkpoint: keep one row per epoch, the newest.
        record["history"] = [h for h in record["history"] if h.get("epoch") != row["epoch"]] + [row]
        record["history"].sort(key=lambda h: h["epoch"])
        record["wall_s"] = float(result.get("time_total_s", 0.0))
        if result.get("checkpoint_path"):
            record["checkpoint_path"] = str(result["checkpoint_path"])
        self._save(record)
        self._scalars(trial.trial_id, row)
        value = row.get(self.ctx.metric, math.nan)
        print(
            f"[{self.kind} {trial.trial_id}] epoch {int(row['epoch'])}  {self.ctx.metric} {value:.4f}"
            f"  train/loss {row.get('train/loss', math.nan):.4f}",
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        last = record["history"][-1] if record["history"] else {}
        test = {k: v for k, v in last.items() if k.startswith("test/")}
        # fit() reports test/* only after its last epoch: without them the scheduler stopped it.
        record["status"] = "completed" if test else "stopped_early"
        record["test_metrics"] = test or None
        self._finish(record)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        record["status"] = "error"
        error_file = getattr(trial, "error_file", None)
        text = Path(error_file).read_text() if error_file and Path(error_file).exists() else ""
        record["error"] = _error_summary(text) or "trial failed (no error file)"
        self._finish(record)

    def _finish(self, record: dict[str, Any]) -> None:
        print(
            f"[{self.kind} {record['trial_id']}] {record['status']}"
            + (f": {record['error']}" if record.get("error") else ""),
            flush=True,
        )
        self._save(record)
        self._hparams(record)
        rebuild_leaderboard(self.ctx)

    # ---- TensorBoard ------------------------------------------------------------------------
    def _writer(self, trial_id: str) -> Any:
        if trial_id not in self._writers:
            from torch.utils.tensorboard import (
                SummaryWriter,
            )  # keeps '@' in tags (tensorboardX doesn't)

            self._writers[trial_id] = SummaryWriter(
                str(Path(self.ctx.study_dir, "tensorboard", trial_id))
            )
        return self._writers[trial_id]

    def _scalars(self, trial_id: str, row: Mapping[str, float]) -> None:
        writer, step = self._writer(trial_id), int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and math.isfinite(value):
                writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def _hparams(self, record: dict[str, Any]) -> None:
        """The hparams plugin's summary: params, kind and status, and the best epoch's metrics
        (none for a trial that failed before its first report: it still shows up, as an error)."""
        from torch.utils.tensorboard.summary import hparams

        scored = [h for h in record["history"] if math.isfinite(h.get(self.ctx.metric, math.nan))]
        pick = max if self.ctx.mode == "max" else min
        best = pick(scored, key=lambda h: h[self.ctx.metric]) if scored else {}
        metrics = {f"best/{k}": v for k, v in best.items() if k.startswith("val/")}
        metrics.update({f"best/{k}": v for k, v in (record.get("test_metrics") or {}).items()})
        params = {
            k: v for k, v in record["params"].items() if isinstance(v, int | float | str | bool)
        }
        params.update({"kind": record["kind"], "status": record["status"]})
        writer = self._writer(record["trial_id"])
        for summary in hparams(params, metrics):
            writer.file_writer.add_summary(summary)
        for key, value in metrics.items():  # the hparams view reads these scalar tags
            writer.add_scalar(key, value, global_step=int(best["epoch"]))
        writer.close()
        self._writers.pop(record["trial_id"], None)


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
