"""``study.bridge``: a Train run's reports reach its Tune trial in order, the last one included."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle
import ray.tune
from ray.util.queue import Empty

from study.bridge import fit_reporting

# Ray's workers cannot import this test module: its trial function travels by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class LateQueue:
    """A report queue whose first ``get`` lets ``fit()`` put its one report and end, and only then
    times out: the interleaving in which a reader that checked for the end of ``fit()`` after its
    ``get`` (not before) would end the trial without the report."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.reading = threading.Event()  # the first get has begun
        self.gets = 0

    def fit(self) -> None:  # the trainer's: waits for the reader, then reports and returns
        assert self.reading.wait(timeout=10)
        self.items.append({"epoch": 1})

    def get(self, timeout: float) -> dict[str, Any]:
        self.gets += 1
        if self.gets == 1:
            self.reading.set()
            (fit,) = [t for t in threading.enumerate() if t.name == "train-fit"]
            fit.join(timeout=10)
            assert not fit.is_alive()
            raise Empty
        if self.items:
            return self.items.pop(0)
        raise Empty

    def shutdown(self) -> None:
        pass


def test_a_report_put_while_the_reader_waits_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    queue, passed = LateQueue(), list[dict[str, Any]]()
    reports = type("Reports", (), {"queue": queue})()
    monkeypatch.setattr(ray.tune, "report", passed.append)
    fit_reporting(queue, reports)  # the queue is the trainer too: its fit() waits for the reader
    assert passed == [{"epoch": 1}] and queue.gets == 3  # timed out, the report, empty: done


class InstantFit:
    """A trainer whose ``fit()`` makes ``n`` reports and returns at once, as a Train run that ends
    right after its last report: the moment a forwarded report can be overtaken by the trial's end."""

    def __init__(self, reports: Any, n: int, fail: bool = False) -> None:
        self.reports, self.n, self.fail = reports, n, fail

    def fit(self) -> None:
        for epoch in range(1, self.n + 1):
            ckpt = type("Ckpt", (), {"path": f"/ckpt/{epoch}"})() if epoch == self.n else None
            self.reports.after_report(None, [{"epoch": epoch, "score": epoch / 10}, {}], ckpt)
        if self.fail:
            raise RuntimeError("worker group failed")


def trial(config: dict[str, Any]) -> None:
    from study.bridge import ReportQueue, fit_reporting

    reports = ReportQueue()
    fit_reporting(InstantFit(reports, config["n"], config.get("fail", False)), reports)


def run(tmp_path: Path, param_space: dict[str, Any]) -> tuple[Any, dict[str, list[dict]]]:
    """The Tune results, and every report each trial's Tune driver received, in order."""
    from ray import tune

    seen: dict[str, list[dict]] = {}

    class Seen(tune.Callback):  # the study's own view of reports (its records come from these)
        def on_trial_result(self, iteration: int, trials: Any, trial: Any, result: dict) -> None:
            seen.setdefault(trial.trial_id, []).append(result)

    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": 0.5}),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=4),
        run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[Seen()], verbose=0),
    )
    return tuner.fit(), seen


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_every_report_reaches_tune_even_when_fit_ends_at_once(tmp_path: Path) -> None:
    from ray import tune

    results, seen = run(tmp_path, {"n": tune.grid_search([1, 1, 1, 1, 1, 1, 3, 3])})
    assert len(results) == 8 and not results.errors
    for result in results:
        n, reports = result.config["n"], seen.get(result.metrics["trial_id"], [])
        assert [r["epoch"] for r in reports] == list(range(1, n + 1))  # each once, in order
        assert reports[-1]["checkpoint_path"] == f"/ckpt/{n}"  # the last report, rank 0's


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_a_failed_fit_fails_the_trial_after_its_reports(tmp_path: Path) -> None:
    results, seen = run(tmp_path, {"n": 2, "fail": True})
    (result,) = results
    assert "worker group failed" in str(result.error)
    assert [r["epoch"] for r in seen[result.metrics["trial_id"]]] == [1, 2]
