"""Ray Train's ``TorchTrainer`` as a study runs it: the same run, without two costs per trial.

Every ``TorchTrainer.fit()`` of Ray 2.60 starts, beside its controller and workers, two helper
actors, each in a process of its own that imports Train:

* a ``DatasetManager``, even for a run without Ray datasets. A study passes none (each worker
  reads its data itself), so :class:`StudyTrainer` leaves it out when ``datasets`` is empty.
* a detached ``PlacementGroupCleaner``, which removes the run's placement group if the controller
  dies without freeing it: the study's driver outlives a killed controller, and the group would
  hold its CPUs until the driver exits. It stays, changed in two ways (:class:`_Cleaner`). It asks
  the dashboard whether the controller is alive every 5 s instead of every 1 s. And at the end of
  a run that has freed its group it is killed instead of stopped: a stop waits for the poll in
  progress to end, which held up the end of every trial by 0.2-0.8 s (Ray's task timeline,
  ``bench/trial_timeline.py``). An aborted run leaves it running until the controller is gone.

Both are Train internals (``_create_default_callbacks``), which is why ``pyproject.toml`` pins Ray
to 2.60; ``tests/test_trainer.py`` fails if they change.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import (
    PlacementGroupCleanerCallback,
)

__all__ = ["CLEANER_POLL_S", "StudyTrainer"]

#: How often the placement-group cleaner checks that its controller is alive (Ray's default: 1 s).
#: A controller that dies without freeing its group frees it at most this much later.
CLEANER_POLL_S = 5.0


class _Cleaner(PlacementGroupCleanerCallback):
    """Ray's placement-group cleaner callback: killed at a graceful end, left to watch an abort.

    A graceful end shuts the worker group, and with it the placement group, down before it stops
    the cleaner, which then has nothing left to do: a stop waits for the cleaner's poll in
    progress (up to ``check_interval_s``), a kill does not. An abort (a trial that Tune stops)
    stops the cleaner first and frees the group after it, and at the end of a study Tune may end
    the controller's process in between: the group would then never be freed. So an abort leaves
    the cleaner running; it sees the controller gone within one poll, removes the group if it is
    still there, and exits.
    """

    def _stop_cleaner(self) -> None:
        cleaner, self._cleaner = self._cleaner, None
        if cleaner is not None:  # Ray annotates the handle as the actor's class
            ray.kill(cleaner, no_restart=True)  # type: ignore[arg-type]

    def before_controller_abort(self) -> None:
        pass


class StudyTrainer(TorchTrainer):
    """``TorchTrainer`` without a dataset manager when there are no datasets, and with the
    placement-group cleaner of :class:`_Cleaner`, polling every :data:`CLEANER_POLL_S`."""

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = []
        # The static stubs describe Train V1's TorchTrainer, which has no such method.
        for callback in super()._create_default_callbacks():  # type: ignore[misc]
            if isinstance(callback, DatasetsCallback) and not self.datasets:
                continue
            if type(callback) is PlacementGroupCleanerCallback:
                callback = _Cleaner(check_interval_s=CLEANER_POLL_S)
            callbacks.append(callback)
        return callbacks
