"""Torch side of the splits: batches of (history, target), a rank-sharded sampler, loaders.

The sampler implements data parallelism without ``torch.distributed``: every rank builds the same
seeded permutation and takes its own contiguous slice of each global batch, so the union of the
ranks' micro-batches is exactly one global contrastive batch (the keys that the loss all-gathers).

Shapes: ``B`` batch, ``L`` history length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vlm2rec.data.splits import EvalExamples, TrainExamples

__all__ = ["SequenceBatch", "ShardedBatchSampler", "collate", "eval_batches", "train_loader"]


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceBatch:
    """A batch of histories and their next items."""

    histories: torch.Tensor  #: [B, L] int64, 0 = padding, newest last
    history_mask: torch.Tensor  #: [B, L] bool, True where a real item
    targets: torch.Tensor  #: [B] int64
    user_ids: torch.Tensor  #: [B] int64

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: torch.device | str) -> SequenceBatch:
        """The same batch on ``device`` (non-blocking copies; pinned memory makes them async)."""
        fields = dataclasses.fields(self)
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields}
        return SequenceBatch(**moved)


def collate(histories: np.ndarray, targets: np.ndarray, user_ids: np.ndarray) -> SequenceBatch:
    """Arrays of one batch -> :class:`SequenceBatch` (mask derived from the 0 padding id)."""
    hist = torch.from_numpy(np.ascontiguousarray(histories, dtype=np.int64))
    return SequenceBatch(
        histories=hist,
        history_mask=hist != 0,
        targets=torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64)),
        user_ids=torch.from_numpy(np.ascontiguousarray(user_ids, dtype=np.int64)),
    )


class ShardedBatchSampler(Sampler[list[int]]):
    """Seeded, epoch-dependent global batches, each split into equal contiguous per-rank slices.

    Epoch ``e`` permutes ``range(n)`` with seed ``seed + e`` and cuts the permutation into global
    batches of ``G = global_batch_size``; rank ``r`` yields indices ``[r * G/W, (r + 1) * G/W)`` of
    each. All ranks yield the same number of batches, and their slices are disjoint.

    * Small data: if ``n < G``, the global batch is clamped to the largest multiple of the world
      size ``<= n`` (one batch per epoch) instead of yielding nothing.
    * ``drop_last=True`` drops the ragged tail (``n mod G`` examples, different ones each epoch).
      ``drop_last=False`` keeps it as a last, smaller global batch, padded by wrapping around to the
      start of the permutation up to a multiple of ``W``, so every rank still gets an equal share
      (at most ``W - 1`` examples repeat; only then are the ranks not disjoint).
    """

    def __init__(
        self,
        n: int,
        global_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        drop_last: bool = True,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(
                f"global batch size {global_batch_size} must be a positive multiple of the "
                f"world size {world_size} (train.batch_size is the batch summed over workers)"
            )
        if n < world_size:
            raise ValueError(
                f"{n} training examples cannot feed {world_size} ranks (need >= 1 each)"
            )
        self.n, self.rank, self.world_size = n, rank, world_size
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        # Clamp for small data: see the class docstring.
        self.global_batch_size = min(global_batch_size, n - n % world_size)

    @property
    def per_rank(self) -> int:
        """Examples per rank in a full global batch."""
        return self.global_batch_size // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating, every epoch, on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        full, tail = divmod(self.n, self.global_batch_size)
        return full + int(bool(tail) and not self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        perm = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
        g, k = self.global_batch_size, self.per_rank
        full = self.n // g
        for b in range(full):
            yield perm[b * g + self.rank * k : b * g + (self.rank + 1) * k].tolist()
        tail = perm[full * g :]
        if len(tail) and not self.drop_last:
            share = -(-len(tail) // self.world_size)  # ceil: wrap-pad the tail to W * share
            padded = np.concatenate([tail, perm[: share * self.world_size - len(tail)]])
            yield padded[self.rank * share : (self.rank + 1) * share].tolist()


class _TrainDataset(Dataset[SequenceBatch]):
    """Index -> example; ``__getitems__`` lets the DataLoader fetch a whole batch with one gather."""

    def __init__(self, examples: TrainExamples) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples.targets)

    def __getitem__(self, index: int) -> SequenceBatch:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> SequenceBatch:
        idx = np.asarray(indices, dtype=np.int64)
        ex = self.examples
        return collate(ex.histories[idx], ex.targets[idx], ex.user_ids[idx])


def _identity(batch: Any) -> Any:
    # Module level (not a lambda) so that worker processes can pickle it.
    return batch


def train_loader(
    examples: TrainExamples,
    global_batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int = 0,
) -> DataLoader[SequenceBatch]:
    """A DataLoader of this rank's :class:`SequenceBatch` es (``global_batch_size / world_size`` each).

    Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch to reshuffle.
    """
    sampler = ShardedBatchSampler(len(examples.targets), global_batch_size, rank, world_size, seed)
    return DataLoader(
        _TrainDataset(examples),
        batch_sampler=sampler,
        collate_fn=_identity,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def eval_batches(examples: EvalExamples, batch_size: int) -> Iterator[SequenceBatch]:
    """Consecutive batches in example order (batch ``k`` holds rows ``k*batch_size`` onward)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(examples.targets), batch_size):
        stop = start + batch_size
        yield collate(
            examples.histories[start:stop],
            examples.targets[start:stop],
            examples.user_ids[start:stop],
        )
