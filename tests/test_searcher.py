"""The study's Optuna searcher: ASHA-stopped trials are PRUNED in optuna.db, with their
intermediate values by epoch, and the objective carries the study metric's name. Driven the way
Tune drives it (suggest, one result per epoch, complete), with no Ray running."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from study.searcher import StudySearcher, finished_state

METRIC = "val/ndcg@10"


def _searcher(db: Path, sampler: optuna.samplers.BaseSampler | None = None) -> StudySearcher:
    searcher = StudySearcher(
        metric=METRIC,
        mode="max",
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        storage=optuna.storages.RDBStorage(f"sqlite:///{db}"),
    )
    assert searcher.set_search_properties(None, None, {"loss.alpha": tune.loguniform(0.1, 1.0)})
    return searcher


def _run(searcher: StudySearcher, trial_id: str, values: list[float], *, final: bool) -> dict:
    """Suggest a trial and report one value per epoch; return the last report (with test/* when
    ``final``), which, as Tune does with the report its scheduler stops a trial on, goes to
    ``on_trial_complete`` only."""
    assert searcher.suggest(trial_id) is not None
    results = [
        {"epoch": epoch, "training_iteration": epoch, METRIC: value}
        for epoch, value in enumerate(values, start=1)
    ]
    if final:
        results[-1]["test/ndcg@10"] = values[-1]
    for result in results[:-1]:
        searcher.on_trial_result(trial_id, result)
    return results[-1]


def _trials(db: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{db}").get_trials()


def test_a_trial_stopped_before_its_end_is_pruned_with_its_intermediate_values(
    tmp_path: Path,
) -> None:
    db = tmp_path / "optuna.db"
    searcher = _searcher(db)
    searcher.on_trial_complete("stopped", _run(searcher, "stopped", [0.2, 0.25], final=False))
    searcher.on_trial_complete("ran", _run(searcher, "ran", [0.3, 0.35, 0.4], final=True))
    searcher.on_trial_complete("broke", _run(searcher, "broke", [0.1], final=False), error=True)
    stopped, ran, broke = _trials(db)
    assert stopped.state is TrialState.PRUNED
    assert stopped.intermediate_values == {1: 0.2, 2: 0.25}
    assert stopped.value == 0.25  # Optuna's own convention: the last intermediate value
    assert ran.state is TrialState.COMPLETE and ran.value == 0.4
    assert ran.intermediate_values == {1: 0.3, 2: 0.35, 3: 0.4}
    assert broke.state is TrialState.FAIL


def test_errors_and_missing_or_nan_values_fail() -> None:
    assert finished_state({METRIC: 0.3, "test/x": 1.0}, METRIC, error=True) is TrialState.FAIL
    assert finished_state({"test/x": 1.0}, METRIC, error=False) is TrialState.FAIL
    assert finished_state({METRIC: float("nan")}, METRIC, error=False) is TrialState.FAIL
    assert finished_state(None, METRIC, error=False) is TrialState.FAIL
    assert finished_state({METRIC: 0.3}, METRIC, error=False) is TrialState.PRUNED
    assert finished_state({METRIC: 0.3, "test/x": 1.0}, METRIC, error=False) is TrialState.COMPLETE


def test_the_objective_is_named_after_the_study_metric(tmp_path: Path) -> None:
    db = tmp_path / "optuna.db"
    _searcher(db)
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{db}").metric_names == [METRIC]


def test_intermediate_values_are_keyed_by_epoch_across_a_resume(tmp_path: Path) -> None:
    """After ``Tuner.restore`` Tune's training_iteration restarts at 1 while the trial continues
    at its real epoch, and re-reports the checkpoint's epoch first."""
    db = tmp_path / "optuna.db"
    searcher = _searcher(db)
    searcher.on_trial_result("t", _run(searcher, "t", [0.2, 0.25], final=False))
    for iteration, (epoch, value) in enumerate([(2, 0.25), (3, 0.3)], start=1):
        result = {"epoch": epoch, "training_iteration": iteration, METRIC: value}
        searcher.on_trial_result("t", result)
    searcher.on_trial_complete("t", {**result, "test/ndcg@10": 0.3})
    (trial,) = _trials(db)
    assert trial.intermediate_values == {1: 0.2, 2: 0.25, 3: 0.3}
    assert trial.state is TrialState.COMPLETE


def test_the_grid_samplers_stop_after_its_last_point_is_not_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "optuna.db"
    searcher = StudySearcher(
        metric=METRIC,
        mode="max",
        sampler=optuna.samplers.GridSampler({"loss.alpha": [0.1]}, seed=0),
        study_name="s",
        storage=optuna.storages.RDBStorage(f"sqlite:///{db}"),
    )
    searcher.set_search_properties(None, None, {"loss.alpha": tune.choice([0.1])})
    with caplog.at_level("WARNING"):
        searcher.on_trial_complete("g", _run(searcher, "g", [0.2], final=False))
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    (trial,) = _trials(db)
    assert trial.state is TrialState.PRUNED
