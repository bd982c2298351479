"""The per-trial Tune function: resolve the trial's run config and run a Ray Train ``TorchTrainer``.

Train V2 pattern (docs/ARCHITECTURE.md, "Ray traps"): Tune runs :func:`run_trial` once per trial
with a small CPU share; it builds a ``TorchTrainer`` (:class:`study.trainer.StudyTrainer`) whose
workers run :func:`study.worker.train_loop_per_worker`, and :mod:`study.bridge` forwards rank 0's
per-epoch reports to the trial, the last one included. The Train run is named ``train-<trial id>`` with no
timestamp, so a retried or restored trial resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# At run time ``ray.train.*`` is Train V2's (default since Ray 2.51); the static stubs still
# describe V1, hence the two type-ignores below.
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from study.bridge import ReportQueue, fit_reporting
from study.search_space import trial_config
from study.trainer import StudyTrainer
from study.worker import train_loop_per_worker
from vlm2rec.config import to_dict

__all__ = ["TrialPlan", "run_trial"]


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """What every trial of a study shares (passed with ``tune.with_parameters``)."""

    base: dict[str, Any]  #: base run config (RunConfig as dict), data path already absolute
    train_storage: str  #: Train storage path for checkpoints (local folder, NFS mount or s3://)
    workers_per_trial: int  #: data-parallel Train workers per trial
    gpus_per_worker: float  #: GPUs per worker (0 = CPU)
    cpus_per_worker: float  #: logical CPUs per worker (fractions allowed)
    max_failures: int = 2  #: Train worker-group restarts from the last checkpoint
    controller_failure_limit: int = 3  #: failed worker-group starts before the trial errors


def run_trial(params: dict[str, Any], plan: TrialPlan) -> None:
    """Tune trainable: one trial = one data-parallel ``TorchTrainer.fit()``."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(plan.base, params)
    cpu_threads = max(1, int(plan.cpus_per_worker))
    resources = {"CPU": plan.cpus_per_worker}
    if plan.gpus_per_worker:
        resources["GPU"] = plan.gpus_per_worker
    reports = ReportQueue()
    trainer = StudyTrainer(
        train_loop_per_worker,
        train_loop_config={"run": to_dict(cfg), "threads": cpu_threads},
        scaling_config=ScalingConfig(
            num_workers=plan.workers_per_trial,
            use_gpu=plan.gpus_per_worker > 0,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=f"train-{trial_id}",
            storage_path=plan.train_storage,
            callbacks=[reports],  # type: ignore[list-item]
            failure_config=FailureConfig(  # type: ignore[call-arg]
                max_failures=plan.max_failures,
                controller_failure_limit=plan.controller_failure_limit,
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    fit_reporting(trainer, reports)
