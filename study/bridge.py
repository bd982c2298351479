"""The bridge from a trial's Ray Train run to its Tune trial: every report, in order, the last one too.

Ray's own bridge (``ray.tune.integration.ray_train.TuneReportCallback``) puts rank 0's metrics on
a Ray queue that the trial's Tune session polls in turns with its local result queue (0.2 s
each). When the trial function returns, Tune's function wrapper puts its end-of-trial marker on
that local queue. A last report that reaches the Ray queue while the session waits on the local
queue, followed within the same wait by the end of ``fit()``, is overtaken by the marker: Tune
ends the trial without it. A 1-epoch trial then has no result at all; a longer one loses its last
epoch and its ``test/*`` metrics, and reads as stopped early.

Here the trial function itself reads the queue: ``fit()`` runs in a thread, each report is passed
on with ``ray.tune.report`` (which returns once Tune took it), and the function returns when it
reads the end marker that the thread puts on the queue after ``fit()`` returned. Every report was
put before that (the Train controller calls ``after_report`` synchronously), so the marker comes
after the last one, and the reader waits on the queue without polling.

When Tune stops the trial (ASHA), ``ray.tune.report`` raises ``SystemExit`` in the trial function.
Tune may then run the next trial in the same process (``reuse_actors``), so the stopped trial's
Train run is aborted through its controller, which each report carries, before the function
ends: left running, it would go on training beside the next trial and hold its workers' CPUs.

The queue is an actor, a process of its own, so each trial process creates one and keeps it for
the trials it runs after (:func:`_process_queue`): one process start fewer per trial. Each report
carries its run's token, and a trial skips what an aborted run before it put late.
"""

from __future__ import annotations

import os
import pickle
import queue
import threading
import time
import uuid
from typing import Any

import ray
import ray.tune
from ray.actor import ActorHandle
from ray.exceptions import RayActorError
from ray.train import UserCallback
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

__all__ = ["ReportQueue", "fit_reporting"]

#: The key a forwarded report carries its checkpoint's path under (as Ray's own bridge does).
CHECKPOINT_PATH_KEY = "checkpoint_path"
#: How often an abort checks that it is done (and empties the queue meanwhile).
_POLL_S = 0.2
#: How long a stopped trial waits for its Train run to abort before it kills the controller, and
#: then for ``fit()`` to return.
_ABORT_S = 5.0
#: How long Tune waits for a stopped trial's function to end before it reuses the process for the
#: next trial (Tune's default is 2 s; a reset that times out fails the next trial instead).
_TUNE_STOP_TIMEOUT_S = str(int(4 * _ABORT_S))


class ReportQueue(UserCallback):
    """Train callback (runs in the Train controller): rank 0's metrics of each report onto a queue.

    The metrics are rank 0's only: ``worker.py`` reports all-reduced metrics from every rank. A
    checkpoint is already in Train's storage; only its path travels, under ``checkpoint_path``.
    Each item is ``(run, controller, report)``, pickled: ``run`` is this callback's token, and the
    controller's handle lets a stopped trial abort its run. ``(run, None, None)`` ends the run.
    """

    def __init__(self) -> None:
        self.queue = _process_queue()
        self.run = uuid.uuid4().hex

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        report = dict(metrics[0])
        if checkpoint is not None:
            report[CHECKPOINT_PATH_KEY] = checkpoint.path
        # Pickled here, so the queue's actor only holds bytes: unpickling the controller's handle
        # there imported Train's controller module with pandas and numpy, 0.5 s on the first
        # report of every trial, which the controller waits for (bench/trial_timeline.py).
        controller = ray.get_runtime_context().current_actor
        self.queue.put(pickle.dumps((self.run, controller, report)))


#: This process's report queue, for every trial it runs (see the module's docstring).
_QUEUE: Queue | None = None


def _process_queue() -> Queue:
    """The queue of the trial process this runs in, created on its first trial (and again if it
    died). The actor lives as long as the process (Ray ends an actor with its owner)."""
    global _QUEUE
    try:
        if _QUEUE is not None:
            _QUEUE.qsize()  # one round trip: a dead queue would fail every later trial here
    except RayActorError:
        _QUEUE = None
    if _QUEUE is None:
        # On the trial function's node: an actor that needs no resources may be placed anywhere,
        # and a lost worker node must not take the queue of a trial that resumes.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        #: one report at a time: Train waits for the trial to take a report before the next
        _QUEUE = Queue(maxsize=1, actor_options={"num_cpus": 0, "scheduling_strategy": here})
    return _QUEUE


def fit_reporting(trainer: Any, reports: ReportQueue) -> None:
    """``trainer.fit()`` with each report that ``reports`` collects passed to ``ray.tune.report``.

    Runs in the Tune trial function. Raises what ``fit()`` raised, after the reports made before;
    when Tune stops the trial, aborts the Train run and re-raises Tune's ``SystemExit``.
    """
    failure: list[BaseException] = []
    controller: ActorHandle | None = None
    stopped = threading.Event()  # Tune stopped the trial: nobody reads the queue any more

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised in the trial function below
            failure.append(exc)
        finally:
            if not stopped.is_set():
                reports.queue.put(pickle.dumps((reports.run, None, None)))

    # Read by Tune in this process when it resets it for the next trial (reuse_actors).
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", _TUNE_STOP_TIMEOUT_S)
    thread = threading.Thread(target=fit, name="train-fit", daemon=True)
    thread.start()
    try:
        while True:
            run, sender, report = pickle.loads(reports.queue.get())
            if run != reports.run:  # a late report of a run aborted before
                continue
            if report is None:
                break
            controller = sender
            ray.tune.report(report)  # SystemExit when Tune stops the trial
    except SystemExit:
        stopped.set()
        _abort(controller, reports.queue)
        thread.join(timeout=_ABORT_S)
        raise
    thread.join()
    if failure:
        raise failure[0]


def _abort(controller: ActorHandle | None, reports: Queue) -> None:
    """End a stopped trial's Train run: abort it (workers and placement group freed, the run
    marked aborted), or kill its controller if that takes longer than ``_ABORT_S``. ``None``:
    Tune stopped the trial before its first report, and its run dies with this process.

    Meanwhile the queue is emptied: a controller blocked on putting its next report (Train calls
    ``after_report`` in the controller's event loop) takes the abort only once the put returns.
    """
    if controller is None:
        return
    aborted: ray.ObjectRef = controller.abort.remote()
    deadline = time.monotonic() + _ABORT_S
    while not ray.wait([aborted], timeout=_POLL_S)[0]:
        _drain(reports)
        if time.monotonic() > deadline:
            ray.kill(controller)
            break
    _drain(reports)


def _drain(reports: Queue) -> None:
    """Take every item off ``reports`` (they belong to a run that is being aborted)."""
    while True:
        try:
            reports.get_nowait()
        except queue.Empty:  # Ray's queue raises a subclass
            return
