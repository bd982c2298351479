"""The per-worker loop that Ray Train runs: config from a dict, DistInfo from Ray, then ``fit``.

Every rank calls :func:`train_loop_per_worker`. Ray Train owns the process group (the launcher
always does: docs/ARCHITECTURE.md, "Layers"); this module only translates Ray's context into the
library's values and turns ``fit``'s reports into ``ray.train.report`` calls (a barrier: every
rank reports once per epoch).

Fault injection (for the fault drills in ``tests/test_fault_drills.py``; inert unless set): with the
environment variables ``VLM2REC_FAULT_KILL_RANK=r``, ``VLM2REC_FAULT_KILL_EPOCH=e`` and
``VLM2REC_FAULT_MARKER=<file>``, the worker of rank ``r`` SIGKILLs itself when it has trained epoch
``e`` but not yet reported it: the epoch's work is lost and the restarted worker group resumes from
the checkpoint of epoch ``e - 1``. It fires once per marker file (created atomically first). Ray
workers inherit the environment of the process that started Ray.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from vlm2rec.checkpoint import PROGRESS, read_progress
from vlm2rec.config import RunConfig, from_dict
from vlm2rec.distributed import DistInfo

__all__ = ["FAULT_ENV", "RayReporter", "fault_due", "train_loop_per_worker"]

#: The fault-injection variables (see the module docstring).
FAULT_ENV = ("VLM2REC_FAULT_KILL_RANK", "VLM2REC_FAULT_KILL_EPOCH", "VLM2REC_FAULT_MARKER")


def fault_due(rank: int, epoch: int, env: Mapping[str, str] = os.environ) -> bool:
    """True once (per marker file) when ``env`` asks to kill this rank at this epoch.

    Killing before the report, not after it, makes the drill deterministic: an earlier report of
    this rank may still sit in its result queue, which the Train controller polls only every
    ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``; by now a whole epoch has passed since it was queued.
    """
    rank_s, epoch_s, marker = (env.get(k, "") for k in FAULT_ENV)
    if not (rank_s and epoch_s and marker) or (rank, epoch) != (int(rank_s), int(epoch_s)):
        return False
    try:  # O_EXCL: exactly one process ever wins the marker, so the drill fires once
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class RayReporter:
    """``ray.train.report`` once per epoch on every rank; the checkpoint is attached on rank 0.

    The study metric must be in every report (Optuna indexes it), so when an epoch is not validated
    (``eval.every_epochs > 1``) the last validated value is carried forward.
    """

    def __init__(self, metric: str, rank: int = 0) -> None:
        self.metric, self.rank = metric, rank
        self.last: float = math.nan

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        out = dict(metrics)
        self.last = float(out.setdefault(self.metric, self.last))
        checkpoint = (
            ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        )
        if fault_due(self.rank, int(out.get("epoch", step))):
            os.kill(os.getpid(), signal.SIGKILL)  # the fault drill: die mid-epoch, unreported
        ray.train.report(out, checkpoint=checkpoint)


def _dist_info() -> DistInfo:
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    return DistInfo(
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        local_rank=ctx.get_local_rank(),
        device=str(device),
    )


def _resume_dir() -> Path | None:
    """A retried or restored Train run continues from its latest persisted checkpoint."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="vlm2rec-resume-")))


def _final_report(resume: Path | None) -> dict[str, float] | None:
    """The last report of a run whose checkpoint already holds its end (``test/*`` are reported
    after the last epoch only), else None."""
    if resume is None:
        return None
    history = read_progress((resume / PROGRESS).read_text()).history
    if history and any(k.startswith("test/") for k in history[-1]):
        return {k: float(v) for k, v in history[-1].items()}
    return None


def _quiet_train_reports() -> None:
    """Ray Train logs every report of every rank with all its metrics at INFO: ~70 numbers per line."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``loop_config = {"run": <RunConfig as dict>, "threads": <torch threads per worker>}``."""
    # Imported here, not at the top: every trial's Tune driver imports this module to hand the
    # function to TorchTrainer, and the model stack (transformers, peft) costs it ~3 s per trial.
    from vlm2rec.train import fit

    _quiet_train_reports()
    torch.set_num_threads(int(loop_config.get("threads", 1)))
    cfg: RunConfig = from_dict(loop_config["run"])
    local = Path(tempfile.mkdtemp(prefix="vlm2rec-ckpt-"))
    dist = _dist_info()
    reporter = RayReporter(cfg.eval.metric, dist.rank)
    resume = _resume_dir()
    final = _final_report(resume)
    if final is not None:
        # The run had finished, but its last report never reached Tune (the study driver died in
        # between; Train runs a report ahead). fit() would train nothing and report nothing, and
        # the trial would end with no test metrics: report the final epoch again instead.
        reporter.report(final, int(final["epoch"]), resume if dist.is_main else None)
        return
    fit(cfg, dist, reporter, resume_from=resume, checkpoint_root=local)
