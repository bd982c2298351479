"""What a study records about each trial, and where it keeps it.

* :class:`TrialRecord`: one trial (kind, params, per-epoch history, status, test metrics and the
  facts that reproduce it). The study driver's Tune callbacks write it, the leaderboard, the report
  and ``confirm.py`` read it; nobody else spells out its fields.
* ``trials/<trial_id>.json``: a record as JSON (:func:`write_record`, :func:`read_records`),
  rewritten atomically after every report, so a killed driver loses nothing.
* The leaderboard columns that are record fields (:func:`record_columns`): each column's Arrow type
  stands next to the field it comes from.
* :class:`StudyFolder`: the file layout of ``<storage>/<study>/``.

Ray-free (pyarrow only), so the offline tools read exactly what a study wrote. Also the helpers
every study module shares: :func:`plain` (numpy scalars, as Tune samples them, to Python values)
and :func:`best_epoch_index` (the best report of a history, by the library's own ``is_better``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeGuard

import pyarrow as pa

from vlm2rec.atomic import atomic_write_text
from vlm2rec.selection import is_better

__all__ = [
    "VERSION_PACKAGES",
    "Kind",
    "LeaderboardError",
    "Status",
    "StudyFolder",
    "TrialRecord",
    "best_epoch_index",
    "finite",
    "plain",
    "read_records",
    "record_columns",
    "run_name",
    "trial_label",
    "write_record",
]

Kind = Literal["reference", "search"]
Status = Literal["completed", "stopped_early", "error"]
#: Packages whose versions each record carries (leaderboard columns ``<package>_version``).
VERSION_PACKAGES = ("torch", "transformers", "ray", "optuna")


class LeaderboardError(RuntimeError):
    """A trial record or leaderboard could not be built, read or written; the message names the
    path or the trial."""


def plain(value: Any) -> Any:
    """A numpy scalar (what Tune samples) as the Python value the strict config accepts; any
    other value as it is."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, str | bytes) else value


def finite(value: Any) -> TypeGuard[float]:
    """A real number that is not NaN or infinite (``bool`` is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def best_epoch_index(history: Sequence[Mapping[str, Any]], metric: str, mode: str) -> int | None:
    """Index of the best report by ``metric`` (earliest on ties); None if it was never reported."""
    best: int | None = None
    for i, row in enumerate(history):
        value = row.get(metric)
        if finite(value) and is_better(
            value, None if best is None else history[best][metric], mode
        ):
            best = i
    return best


def _column(arrow: pa.DataType, *, head: bool = False) -> dict[str, Any]:
    """Metadata of a record field that is also a leaderboard column of type ``arrow`` (``head``:
    among the identifying columns at the front, else among the facts at the end)."""
    return {"arrow": arrow, "head": head}


_ID, _TEXT = _column(pa.string(), head=True), _column(pa.string())


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """Everything the study keeps about one trial."""

    trial_id: str = field(metadata=_ID)  #: Tune trial id
    kind: Kind = field(default="search", metadata=_ID)  #: the alpha = beta = 0 reference or not
    #: finished, stopped by the scheduler, or failed
    status: Status = field(default="completed", metadata=_ID)
    error: str | None = field(default=None, metadata=_ID)  #: the failure message (status error)
    params: Mapping[str, Any] = field(default_factory=dict)  #: {dotted path: value}
    history: list[dict[str, float]] = field(default_factory=list)  #: per-epoch reports
    test_metrics: Mapping[str, float] | None = None  #: test/* of the best checkpoint
    #: wall-clock seconds of the trial
    wall_s: float | None = field(default=None, metadata=_column(pa.float64()))
    #: GPUs the trial held (workers x GPUs per worker); the leaderboard shows gpu_s = gpus x wall_s
    gpus: float = 0.0
    #: best (or latest) persisted Train checkpoint
    checkpoint_path: str | None = field(default=None, metadata=_TEXT)
    #: resolved run config (a dict, or its JSON text, which is what the leaderboard holds)
    config: Mapping[str, Any] | str | None = field(default=None, metadata=_TEXT)
    command: str | None = field(default=None, metadata=_TEXT)  #: single-run command reproducing it
    seed: int | None = field(default=None, metadata=_column(pa.int64()))  #: the run's seed
    config_hash: str | None = field(default=None, metadata=_TEXT)  #: config_hash of the config
    data_fingerprint: str | None = field(default=None, metadata=_TEXT)  #: the dataset's fingerprint
    git_sha: str | None = field(default=None, metadata=_TEXT)  #: code version
    #: {package: version} of VERSION_PACKAGES; the leaderboard's <package>_version columns
    versions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("reference", "search"):
            raise LeaderboardError(
                f"trial {self.trial_id}: kind {self.kind!r} not reference|search"
            )
        if self.status not in ("completed", "stopped_early", "error"):
            raise LeaderboardError(
                f"trial {self.trial_id}: status {self.status!r} not completed|stopped_early|error"
            )

    @property
    def dataset(self) -> str | None:
        """The trial's dataset: the folder name of its ``data.path`` (``amazon2018-toys``), from
        its resolved config, else from its params (a record rebuilt from Tune's state has only
        those); None when neither says."""
        config = json.loads(self.config) if isinstance(self.config, str) else self.config
        path = (config or {}).get("data", {}).get("path", self.params.get("data.path"))
        return Path(str(path)).name if path else None

    def with_report(self, row: Mapping[str, float]) -> TrialRecord:
        """This record with one more per-epoch report (``row`` has an ``epoch``). A restored trial
        re-reports from its checkpoint: an epoch reported again replaces its earlier row."""
        kept = [h for h in self.history if h.get("epoch") != row["epoch"]]
        history = sorted([*kept, dict(row)], key=lambda h: h["epoch"])
        return dataclasses.replace(self, history=history)

    def columns(self) -> dict[str, Any]:
        """The values of the leaderboard columns that are record fields (see :func:`record_columns`)."""
        out = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if "arrow" in f.metadata
        }
        if out["config"] is not None and not isinstance(out["config"], str):
            out["config"] = json.dumps(out["config"], sort_keys=True)
        out.update({f"{p}_version": self.versions.get(p) for p in VERSION_PACKAGES})
        return out

    def to_json(self) -> str:
        """The record as the JSON text of its ``trials/<trial_id>.json`` file."""
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        """Read :meth:`to_json`'s text; keys this version does not know are ignored and missing
        ones take their defaults, so records of older and newer code both load."""
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def record_columns() -> tuple[list[pa.Field], list[pa.Field]]:
    """(front, back) leaderboard columns that hold record fields, in field order; the back ends
    with one ``<package>_version`` string column per :data:`VERSION_PACKAGES` entry."""
    fields = [f for f in dataclasses.fields(TrialRecord) if "arrow" in f.metadata]
    front = [pa.field(f.name, f.metadata["arrow"]) for f in fields if f.metadata["head"]]
    back = [pa.field(f.name, f.metadata["arrow"]) for f in fields if not f.metadata["head"]]
    back += [pa.field(f"{p}_version", pa.string()) for p in VERSION_PACKAGES]
    return front, back


@dataclasses.dataclass(frozen=True)
class StudyFolder:
    """The files of one study folder ``<storage>/<study>/`` (all written on the study driver)."""

    root: Path  #: the study folder

    @property
    def leaderboard(self) -> Path:
        """One row per trial at its best epoch (``leaderboard.py``)."""
        return self.root / "leaderboard.parquet"

    @property
    def trials(self) -> Path:
        """One :class:`TrialRecord` JSON file per trial."""
        return self.root / "trials"

    @property
    def tensorboard(self) -> Path:
        """One TensorBoard run folder per trial."""
        return self.root / "tensorboard"

    @property
    def ray_log(self) -> Path:
        """What Ray, Tune and Optuna print and log on the study driver (unless ``--verbose``)."""
        return self.root / "ray.log"

    def tensorboard_run(self, kind: Kind, trial_id: str, params: Mapping[str, Any]) -> Path:
        """The trial's TensorBoard run folder (:func:`run_name`)."""
        return self.tensorboard / run_name(kind, trial_id, params)

    @property
    def optuna_db(self) -> Path:
        """The Optuna study of the search trials (SQLite)."""
        return self.root / "optuna.db"

    @property
    def done(self) -> Path:
        """Marks a finished study: rerunning its command only prints the leaderboard."""
        return self.root / "study_done.json"

    @property
    def lock(self) -> Path:
        """Held (``flock``) by the one driver running the study; names it (``study/lock.py``)."""
        return self.root / "driver.lock"

    def record(self, trial_id: str) -> Path:
        """The trial's record file."""
        return self.trials / f"{trial_id}.json"

    def config(self, trial_id: str) -> Path:
        """The trial's resolved run config: ``vlm2rec.cli train --config`` re-runs it without Ray."""
        return self.root / "configs" / f"{trial_id}.json"


def trial_label(kind: Kind, trial_id: str) -> str:
    """What the console and TensorBoard call a trial: ``reference`` (a study has one) or
    ``search-<trial id>``."""
    return "reference" if kind == "reference" else f"search-{trial_id}"


def run_name(kind: Kind, trial_id: str, params: Mapping[str, Any]) -> str:
    """A trial's TensorBoard run name: its :func:`trial_label`, and for a searched trial its
    parameters, each by the last part of its path unless two share it (3 significant digits):
    ``search-633f2a38_alpha=0.312_temperature=0.0512_beta=0.2``. Only file-name-safe characters."""
    label = trial_label(kind, trial_id)
    if kind == "reference":
        return label
    last = [path.rsplit(".", 1)[-1] for path in params]
    parts = [
        f"{short if last.count(short) == 1 else path}={_short(value)}"
        for path, short, value in zip(params, last, params.values(), strict=True)
    ]
    return re.sub(r"[^\w.=+@-]", "-", "_".join([label, *parts]))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def write_record(folder: StudyFolder, record: TrialRecord) -> Path:
    """Write (atomically replace) the record's ``trials/<trial_id>.json``."""
    return atomic_write_text(folder.record(record.trial_id), record.to_json())


def read_records(folder: StudyFolder) -> list[TrialRecord]:
    """Every record of a study folder, by trial id (none if there is no ``trials/`` folder)."""
    return [TrialRecord.from_json(p.read_text()) for p in sorted(folder.trials.glob("*.json"))]
