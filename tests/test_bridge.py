"""``study.bridge``: a Train run's reports reach its Tune trial in order, the last one included."""

from __future__ import annotations

import pickle
import queue
import sys
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle
import ray.tune

from study.bridge import fit_reporting

# Ray's workers cannot import this test module: its trial function travels by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Run:
    """A trainer that is its own report queue: ``fit()`` puts ``items`` (``(run, report)``) on
    ``queue``, as the Train controller's callback does, and returns (or raises, with ``fail``)."""

    def __init__(self, *items: tuple[str, dict[str, Any]], fail: bool = False) -> None:
        self.queue: queue.Queue[bytes] = queue.Queue()
        self.items, self.fail, self.run = items, fail, "this"

    def fit(self) -> None:
        for run, report in self.items:
            self.queue.put(pickle.dumps((run, None, report)))
        if self.fail:
            raise RuntimeError("worker group failed")


@pytest.fixture
def reported(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the trial function passes to ``ray.tune.report``, in order."""
    passed = list[dict[str, Any]]()
    monkeypatch.setattr(ray.tune, "report", passed.append)
    return passed


def test_every_report_is_passed_on_in_order_the_last_one_too(reported: list[dict]) -> None:
    run = Run(("this", {"epoch": 1}), ("this", {"epoch": 2}))
    fit_reporting(run, run)  # type: ignore[arg-type]  # the run is its own report queue
    assert reported == [{"epoch": 1}, {"epoch": 2}] and run.queue.empty()


def test_a_late_report_of_a_run_before_is_skipped(reported: list[dict]) -> None:
    """The trial process's queue outlives its trials: what an aborted run put after its trial's
    stop must not reach the next trial."""
    run = Run(("aborted", {"epoch": 3}), ("this", {"epoch": 1}), ("aborted", {"epoch": 4}))
    fit_reporting(run, run)  # type: ignore[arg-type]
    assert reported == [{"epoch": 1}] and run.queue.empty()


def test_a_failed_fit_raises_after_its_reports(reported: list[dict]) -> None:
    run = Run(("this", {"epoch": 1}), fail=True)
    with pytest.raises(RuntimeError, match="worker group failed"):
        fit_reporting(run, run)  # type: ignore[arg-type]
    assert reported == [{"epoch": 1}] and run.queue.empty()


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


def stopped_after_one_epoch(config: dict[str, Any]) -> None:
    """Train loop: epoch 1 reports at once; a trial ASHA stops there then ticks into ``ticks/``
    through a 20-s epoch 2, so its ticks show how long its run outlived the stop."""
    import time

    import ray.train

    pid = config["driver_pid"]
    ray.train.report({"epoch": 1, "score": config["q"], "driver_pid": pid})
    if config["q"] < 1:
        ticks = Path(config["ticks"])
        for _ in range(100):
            ticks.write_text(str(time.time()))
            time.sleep(0.2)
    for epoch in (2, 3):
        ray.train.report({"epoch": epoch, "score": config["q"] * epoch, "driver_pid": pid})


def asha_trial(config: dict[str, Any]) -> None:
    """A study trial in small: a ``TorchTrainer`` whose reports travel through the bridge."""
    import os

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from study.bridge import ReportQueue, fit_reporting

    trial_id = ray.tune.get_context().get_trial_id()
    reports = ReportQueue()
    loop_config = {
        "q": config["q"],
        "driver_pid": os.getpid(),
        "ticks": str(Path(config["root"]) / f"ticks-{trial_id}"),
    }
    trainer = TorchTrainer(
        stopped_after_one_epoch,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(
            name=f"train-{trial_id}", storage_path=config["root"], callbacks=[reports]
        ),
    )
    fit_reporting(trainer, reports)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_a_trial_asha_stops_ends_its_train_run_and_lends_its_process_to_the_next(
    tmp_path: Path,
) -> None:
    """ASHA with reused trial processes, as a study searches: the first trial completes, the next
    two score below it at epoch 1 and are stopped. Each stopped trial's Train run must end at the
    stop, not go on training beside the next trial in the same process, and the process's one
    report queue serves all three trials."""
    import time

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.util.state import list_actors

    def queues() -> set[str]:
        return {a.actor_id for a in list_actors(filters=[("class_name", "=", "_QueueActor")])}

    queues_before = queues()

    last: dict[float, dict[str, Any]] = {}  # by q: the trial's last report as Tune saw it
    stopped_at: dict[str, float] = {}

    class Seen(tune.Callback):
        def on_trial_result(self, iteration: int, trials: Any, trial: Any, result: dict) -> None:
            last[trial.config["q"]] = result

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            stopped_at[trial.trial_id] = time.time()

    tuner = tune.Tuner(
        tune.with_resources(asha_trial, {"CPU": 0.5}),
        param_space={"q": tune.grid_search([1.0, 0.1, 0.2]), "root": str(tmp_path)},
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            scheduler=ASHAScheduler(time_attr="epoch", max_t=3, grace_period=1),
            max_concurrent_trials=1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[Seen()], verbose=0),
    )
    assert not tuner.fit().errors
    assert last[1.0]["epoch"] == 3
    assert [last[q]["epoch"] for q in (0.1, 0.2)] == [1, 1]  # both stopped by ASHA
    assert len({last[q]["driver_pid"] for q in (0.1, 0.2)}) == 1  # one process ran both
    assert len(queues() - queues_before) == 1
    for q in (0.1, 0.2):
        trial_id = last[q]["trial_id"]
        last_tick = float((tmp_path / f"ticks-{trial_id}").read_text())
        # the run's epoch 2 lasts 20 s; aborted at the stop, it ticks at most ~1 s beyond it
        assert last_tick - stopped_at[trial_id] < 5.0
