"""The bridge from a trial's Ray Train run to its Tune trial: every report, in order, the last one too.

Ray's own bridge (``ray.tune.integration.ray_train.TuneReportCallback``) puts rank 0's metrics on
a Ray queue that the trial's Tune session polls in turns with its local result queue (0.2 s
each). When the trial function returns, Tune's function wrapper puts its end-of-trial marker on
that local queue. A last report that reaches the Ray queue while the session waits on the local
queue, followed within the same wait by the end of ``fit()``, is overtaken by the marker: Tune
ends the trial without it. A 1-epoch trial then has no result at all; a longer one loses its last
epoch and its ``test/*`` metrics, and reads as stopped early.

Here the trial function itself reads the queue: ``fit()`` runs in a thread, each report is passed
on with ``ray.tune.report`` (which returns once Tune took it), and the function returns only after
``fit()`` has ended and the queue is empty. Every report was put before ``fit()`` returned (the
Train controller calls ``after_report`` synchronously), so none can arrive later.
"""

from __future__ import annotations

import threading
from typing import Any

import ray
import ray.tune
from ray.train import UserCallback
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

__all__ = ["ReportQueue", "fit_reporting"]

#: The key a forwarded report carries its checkpoint's path under (as Ray's own bridge does).
CHECKPOINT_PATH_KEY = "checkpoint_path"
#: How long the trial function waits on the queue before it checks whether ``fit()`` has ended.
_POLL_S = 0.2


class ReportQueue(UserCallback):
    """Train callback (runs in the Train controller): rank 0's metrics of each report onto a queue.

    The metrics are rank 0's only: ``worker.py`` reports all-reduced metrics from every rank. A
    checkpoint is already in Train's storage; only its path travels, under ``checkpoint_path``.
    """

    def __init__(self) -> None:
        # On the trial function's node: an actor that needs no resources may be placed anywhere,
        # and a lost worker node must not take the queue of a trial that resumes.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        #: one report at a time: Train waits for the trial to take a report before the next
        self.queue: Queue = Queue(
            maxsize=1, actor_options={"num_cpus": 0, "scheduling_strategy": here}
        )

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        report = dict(metrics[0])
        if checkpoint is not None:
            report[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.queue.put(report)


def fit_reporting(trainer: Any, reports: ReportQueue) -> None:
    """``trainer.fit()`` with each report that ``reports`` collects passed to ``ray.tune.report``.

    Runs in the Tune trial function. Raises what ``fit()`` raised, after the reports made before.
    """
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised in the trial function below
            failure.append(exc)

    thread = threading.Thread(target=fit, name="train-fit", daemon=True)
    thread.start()
    try:
        while True:
            # Read before the queue: a report put after this is seen on the next turn.
            running = thread.is_alive()
            try:
                ray.tune.report(reports.queue.get(timeout=_POLL_S))
            except Empty:
                if not running:
                    break
    finally:
        reports.queue.shutdown()
    thread.join()
    if failure:
        raise failure[0]
