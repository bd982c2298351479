"""The study's Optuna searcher: Ray Tune's ``OptunaSearch`` with the trial states Optuna intends.

Tune tells its searcher that a trial is complete both when it ran to its end and when ASHA stopped
it, and ``OptunaSearch`` then stores either one as COMPLETE with its last value. TPE (and every
other model-based sampler) would take a value reached after one rung of epochs as a final one.
Optuna's own convention for such a trial is PRUNED: the sampler ranks pruned trials by how far
they got and what they reached there, after the complete ones. :class:`StudySearcher`:

* stores a trial that did not run to its end as PRUNED (:func:`finished_state`), keeping the
  intermediate values it reported;
* keys those intermediate values by the reported ``epoch``, not by Tune's ``training_iteration``,
  which restarts at 1 when a study is resumed (docs/ARCHITECTURE.md, "Optuna and ASHA");
* names the objective after the study metric (``study.set_metric_names``), so optuna-dashboard
  and Optuna's plots label the axis.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from study.records import finite

__all__ = ["StudySearcher", "finished_state"]

logger = logging.getLogger(__name__)

#: Prefix of the keys ``fit()`` reports with its last epoch only (the best checkpoint's test split).
_FINAL_PREFIX = "test/"


def finished_state(result: Mapping[str, Any] | None, metric: str, error: bool) -> TrialState:
    """The Optuna state of a trial Tune reports finished with ``result`` (its last report).

    FAIL for an error or a last ``metric`` that is missing or not finite (Optuna refuses NaN as a
    value); COMPLETE when the last report carries ``test/*``, which ``fit()`` adds only after its
    last epoch; PRUNED otherwise: the trial stopped before its end (ASHA, or the time budget).
    """
    value = (result or {}).get(metric)
    if error or not finite(value):
        return TrialState.FAIL
    if any(str(key).startswith(_FINAL_PREFIX) for key in result or {}):
        return TrialState.COMPLETE
    return TrialState.PRUNED


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` that records ASHA-stopped trials as PRUNED (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: last epoch told to Optuna per trial (saved and restored with the searcher's state)
        self._last_steps: dict[str, int] = {}

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        if isinstance(self._metric, str) and self._ot_study is not None:
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names([self._metric])

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            super().on_trial_result(trial_id, result)
            return
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Tell Optuna the trial's value at the reported epoch, once per epoch."""
        step = int(result.get("epoch", result["training_iteration"]))
        if step <= self._last_steps.get(trial_id, 0):
            return  # a resumed trial re-reports its checkpoint's epoch: Optuna has it already
        self._last_steps[trial_id] = step
        self._ot_trials[trial_id].report(result[self.metric], step)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        study = self._ot_study
        assert study is not None  # made by set_search_properties before the first trial
        state = finished_state(result, str(self.metric), error)
        if result and state is not TrialState.FAIL:
            # The report a scheduler stops a trial on reaches only this hook, not
            # on_trial_result: it is the pruned trial's last intermediate value.
            self._report(trial_id, result)
        # PRUNED takes no value: Optuna stores the last intermediate value as the trial's.
        value = float(result[self.metric]) if state is TrialState.COMPLETE and result else None
        try:
            study.tell(self._ot_trials[trial_id], value, state=state)
        except Exception as exc:  # the state is stored before the sampler's hook can raise
            if not _grid_exhausted(study, exc):
                logger.warning("optuna: trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


def _grid_exhausted(study: optuna.Study, exc: Exception) -> bool:
    """The grid sampler calling ``study.stop()`` after the last grid point's tell: a plain
    RuntimeError outside ``optimize()``, harmless (the trial's state is stored first)."""
    return type(exc) is RuntimeError and isinstance(study.sampler, optuna.samplers.GridSampler)
