"""The per-worker loop that Ray Train runs: config from a dict, DistInfo from Ray, then ``fit``.

Every rank calls :func:`train_loop_per_worker`. Ray Train owns the process group (the launcher, as
DESIGN.md rule 4 asks); this module only translates Ray's context into the library's values and turns
``fit``'s reports into ``ray.train.report`` calls (a barrier: every rank reports once per epoch).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from vlm2rec.config import RunConfig, from_dict
from vlm2rec.distributed import DistInfo
from vlm2rec.train import fit

__all__ = ["RayReporter", "train_loop_per_worker"]


class RayReporter:
    """``ray.train.report`` once per epoch on every rank; the checkpoint is attached on rank 0.

    The study metric must be in every report (Optuna indexes it), so when an epoch is not validated
    (``eval.every_epochs > 1``) the last validated value is carried forward.
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.last: float = math.nan

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        out = dict(metrics)
        self.last = float(out.setdefault(self.metric, self.last))
        checkpoint = (
            ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        )
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


def _quiet_train_reports() -> None:
    """Ray Train logs every report of every rank with all its metrics at INFO: ~70 numbers per line."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``loop_config = {"run": <RunConfig as dict>, "threads": <torch threads per worker>}``."""
    _quiet_train_reports()
    torch.set_num_threads(int(loop_config.get("threads", 1)))
    cfg: RunConfig = from_dict(loop_config["run"])
    local = Path(tempfile.mkdtemp(prefix="vlm2rec-ckpt-"))
    fit(
        cfg,
        _dist_info(),
        RayReporter(cfg.eval.metric),
        resume_from=_resume_dir(),
        checkpoint_root=local,
    )
