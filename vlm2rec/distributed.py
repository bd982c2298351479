r"""Data-parallel facts and collectives: the only vlm2rec module that imports torch.distributed.

The launcher (torchrun or Ray Train) owns the process group; the library receives a
:class:`DistInfo` value and calls the helpers below, which are no-ops in a single process.

Gradient convention of the gathered loss
----------------------------------------
Every rank ``r`` encodes its local batch :math:`x_r` (``B`` rows), all-gathers the embeddings with
:func:`all_gather_with_grad` into the global batch :math:`X = [x_0; \dots; x_{W-1}]` and computes
the SAME global loss :math:`L(X)`. In rank ``r``'s graph only its own slice is connected to its
parameters. The gather's backward therefore

1. receives :math:`g = \partial L / \partial X` (identical on every rank),
2. SUMS it over the ``W`` ranks (``all_reduce(SUM)``), giving :math:`W\, \partial L/\partial X`,
3. returns the local slice :math:`W\, \partial L/\partial x_r`.

DistributedDataParallel then AVERAGES parameter gradients over the ``W`` ranks:

.. math::

    \frac{1}{W}\sum_r W \frac{\partial L}{\partial x_r}\frac{\partial x_r}{\partial \theta}
    = \sum_r \frac{\partial L}{\partial x_r}\frac{\partial x_r}{\partial \theta}
    = \frac{\partial L}{\partial \theta},

the gradient of the global loss computed in one process on the concatenated batch (tested with
two gloo processes in ``tests/test_distributed.py``). The same sum-then-average rule is also
right when each rank computes a different loss :math:`L_r` (e.g. only its local queries): the net
gradient is then that of :math:`\frac{1}{W}\sum_r L_r`.

Requirement: every rank passes the same number of rows ``B`` (use ``drop_last=True`` in the
distributed sampler / loader); unequal sizes are not padded here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

__all__ = [
    "DistInfo",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "init_from_env",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in data-parallel training (a value, passed to ``fit()``)."""

    rank: int = 0  #: global rank in [0, world_size)
    world_size: int = 1  #: number of data-parallel processes
    local_rank: int = 0  #: rank on this node (selects the GPU)
    device: str = "cpu"  #: torch device string of this process, e.g. "cuda:0"

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"DistInfo.world_size: expected >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"DistInfo.rank: expected 0 <= rank < world_size={self.world_size}, got {self.rank}"
            )
        if self.local_rank < 0:
            raise ValueError(f"DistInfo.local_rank: expected >= 0, got {self.local_rank}")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> DistInfo:
        """Read the initialised process group (torchrun style); single process otherwise.

        Rank and world size come from the process group itself (authoritative), the local rank
        from ``LOCAL_RANK`` (torchrun sets it; default 0). The device is ``cuda:<local_rank>`` when
        CUDA is available, else ``cpu``.
        """
        if _group_ready():
            rank, world = tdist.get_rank(), tdist.get_world_size()
            local_rank = _env_int("LOCAL_RANK", 0)
        else:
            rank, world, local_rank = 0, 1, 0
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        return cls(rank=rank, world_size=world, local_rank=local_rank, device=device)


def init_from_env(backend: str | None = None) -> DistInfo:
    """For launchers (the CLI under torchrun): join the process group the env describes.

    When ``WORLD_SIZE`` > 1 and no process group exists yet, create it from the torchrun variables
    (``backend`` default: nccl with CUDA, else gloo) and pin ``cuda:<LOCAL_RANK>``; then return
    :meth:`DistInfo.from_env`. Library code (``fit``) never calls this: the launcher owns the group.
    """
    if _env_int("WORLD_SIZE", 1) > 1 and not _group_ready():
        cuda = torch.cuda.is_available()
        tdist.init_process_group(backend or ("nccl" if cuda else "gloo"))
        if cuda:
            torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    return DistInfo.from_env()


def _env_int(key: str, default: int) -> int:
    """An integer environment variable, with an error naming it when it is not one."""
    raw = os.environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {key}: expected an integer, got {raw!r}") from err


def _group_ready() -> bool:
    """True when a default process group exists (torch may be built without distributed)."""
    return tdist.is_available() and tdist.is_initialized()


def _gathered(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0: ``[B, ...] -> [W*B, ...]``."""
    x = x.contiguous()
    world = tdist.get_world_size()
    if tdist.get_backend() == "nccl":
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))  # [W*B, ...]
        tdist.all_gather_into_tensor(out, x)
        return out
    # gloo has no all_gather_into_tensor: gather into a list and concatenate.
    parts = [torch.empty_like(x) for _ in range(world)]
    tdist.all_gather(parts, x)
    return torch.cat(parts, dim=0)  # [W*B, ...]


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: all-reduce(SUM) the gradient, keep own slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.rows = x.shape[0]
        ctx.rank = tdist.get_rank()
        return _gathered(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # all_reduce works in place: reduce a private contiguous copy, never autograd's buffer.
        grad = grad.clone(memory_format=torch.contiguous_format)
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]  # [B, ...]: this rank's rows


def all_gather_with_grad(x: Tensor) -> Tensor:
    r"""Autograd-aware all-gather: ``[B, ...] -> [W*B, ...]`` (rank order), identity if W = 1.

    The backward sums the incoming gradient over ranks and returns this rank's slice; see the
    module docstring for why this, with DDP's averaging, gives the gradient of the global loss.
    Every rank must pass the same ``B``.
    """
    if not _group_ready() or tdist.get_world_size() == 1:
        return x
    out = _AllGatherWithGrad.apply(x)
    assert isinstance(out, Tensor)
    return out


def all_gather_no_grad(x: Tensor) -> Tensor:
    """All-gather without gradient (ids, labels): ``[B, ...] -> [W*B, ...]``, identity if W = 1."""
    if not _group_ready() or tdist.get_world_size() == 1:
        return x
    with torch.no_grad():
        return _gathered(x.detach())


def all_reduce_mean(values: dict[str, float], dist: DistInfo) -> dict[str, float]:
    """Mean of each metric over ranks (every rank must pass the same keys); a copy if W = 1."""
    if not dist.is_distributed:
        return dict(values)
    keys = sorted(values)  # the same order on every rank, whatever the insertion order
    # float64 keeps small per-rank differences; the device must suit the backend (nccl: cuda).
    buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
    buf /= dist.world_size
    return {k: float(v) for k, v in zip(keys, buf.tolist(), strict=True)}


def barrier(dist: DistInfo) -> None:
    """Wait for every rank; no-op in a single process."""
    if not dist.is_distributed:
        return
    if tdist.get_backend() == "nccl":
        tdist.barrier(device_ids=[torch.device(dist.device).index or 0])
    else:
        tdist.barrier()


def broadcast_object(obj: T, dist: DistInfo, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every rank (the others' argument is ignored)."""
    if not dist.is_distributed:
        return obj
    box: list[Any] = [obj]
    device = torch.device(dist.device) if tdist.get_backend() == "nccl" else None
    tdist.broadcast_object_list(box, src=src, device=device)
    result: T = box[0]
    return result
