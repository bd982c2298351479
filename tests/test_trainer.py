"""study/trainer.py: the study's TorchTrainer leaves out the dataset manager and keeps a
placement-group cleaner that still frees the group of a controller that died."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle
from namespace_drill import wait_until

# Ray's workers cannot import this test module: its train functions travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _trainer(**kwargs: Any) -> Any:
    from ray.train import ScalingConfig

    from study.trainer import StudyTrainer

    return StudyTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1), **kwargs)


def test_callbacks_are_ray_trains_without_the_dataset_manager_and_with_the_study_cleaner() -> None:
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    from study.trainer import CLEANER_POLL_S, _Cleaner

    trainer = _trainer()
    ours = trainer._create_default_callbacks()
    rays = TorchTrainer._create_default_callbacks(trainer)
    # Ray's list, in its order, minus the dataset manager's callback; its cleaner replaced by ours.
    expected = [type(c) for c in rays if not isinstance(c, DatasetsCallback)]
    assert [type(c) for c in ours] == [
        _Cleaner if t is PlacementGroupCleanerCallback else t for t in expected
    ]
    assert any(isinstance(c, DatasetsCallback) for c in rays)  # what there was to leave out
    (cleaner,) = (c for c in ours if isinstance(c, PlacementGroupCleanerCallback))
    assert cleaner._check_interval_s == CLEANER_POLL_S


def test_a_run_with_datasets_keeps_the_dataset_manager() -> None:
    from ray.train.v2._internal.callbacks import DatasetsCallback

    trainer = _trainer(datasets={"train": lambda: None})
    assert any(isinstance(c, DatasetsCallback) for c in trainer._create_default_callbacks())


def _actors(class_name: str, state: str | None = None) -> list[Any]:
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name)] + ([("state", "=", state)] if state else [])
    return list_actors(filters=filters, detail=True)  # type: ignore[arg-type]


def _returns() -> None:
    pass


def _sleeps(config: dict[str, Any]) -> None:
    Path(config["started"]).touch()
    time.sleep(120)


def _created_groups() -> list[str]:
    from ray.util import placement_group_table

    return [i for i, pg in placement_group_table().items() if pg["state"] == "CREATED"]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_runs_start_no_dataset_manager_and_a_killed_controllers_group_is_freed(
    tmp_path: Path,
) -> None:
    """A run that ends leaves no helper behind. Then a controller's process is killed, as a
    lost trial process takes it: the study's cleaner must still remove the run's placement
    group, or the next trial would wait for its CPUs. Neither run starts a dataset manager."""
    import os
    import signal

    from ray.train import RunConfig, ScalingConfig
    from ray.util import placement_group_table

    from study.trainer import CLEANER_POLL_S, StudyTrainer

    managers = len(_actors("DatasetManager"))
    # Ray is shared with earlier tests: an aborted run's cleaner may still be watching for a poll.
    cleaners, groups = {a.actor_id for a in _actors("PlacementGroupCleaner")}, _created_groups()
    scaling = ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5})
    StudyTrainer(
        _returns,
        scaling_config=scaling,
        run_config=RunConfig(name="ends", storage_path=str(tmp_path)),
    ).fit()
    alive = [a for a in _actors("PlacementGroupCleaner", "ALIVE") if a.actor_id not in cleaners]
    assert not alive and set(_created_groups()) <= set(groups)

    earlier = {a.actor_id for a in _actors("TrainController")}  # the first run's may still exit
    started = tmp_path / "started"
    trainer = StudyTrainer(
        _sleeps,
        train_loop_config={"started": str(started)},
        scaling_config=scaling,
        run_config=RunConfig(name="killed", storage_path=str(tmp_path)),
    )
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # the fit of a killed controller raises: expected
            errors.append(e)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    wait_until(started.exists, 60, "the train function to start")
    (group,) = set(_created_groups()) - set(groups)  # the run's
    (controller,) = [a for a in _actors("TrainController") if a.actor_id not in earlier]
    os.kill(controller.pid, signal.SIGKILL)
    thread.join(timeout=30)
    assert errors, "fit() should fail when its controller dies"

    def removed() -> bool:
        return placement_group_table()[group]["state"] == "REMOVED"

    wait_until(removed, CLEANER_POLL_S + 20, "the killed run's placement group to be freed", 0.5)
    assert len(_actors("DatasetManager")) == managers
