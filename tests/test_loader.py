"""Rank-sharded batch sampler, train loader and eval batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm2rec.data.loader import ShardedBatchSampler, collate, eval_batches, train_loader
from vlm2rec.data.schema import PreparedDataset
from vlm2rec.data.splits import TrainExamples, make_splits


def _epoch(
    n: int, g: int, w: int, seed: int, epoch: int, drop_last: bool = True
) -> list[list[list[int]]]:
    """Batches of every rank for one epoch: ``out[rank][batch]``."""
    out = []
    for rank in range(w):
        sampler = ShardedBatchSampler(n, g, rank, w, seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 200),
    per_rank=st.integers(1, 16),
    w=st.integers(1, 4),
    seed=st.integers(0, 10),
    epoch=st.integers(0, 3),
)
def test_ranks_are_disjoint_equal_and_form_global_batches(
    n: int, per_rank: int, w: int, seed: int, epoch: int
) -> None:
    if n < w:
        with pytest.raises(ValueError, match="cannot feed"):
            ShardedBatchSampler(n, per_rank * w, 0, w, seed)
        return
    g = per_rank * w
    ranks = _epoch(n, g, w, seed, epoch)
    g_eff = min(g, n - n % w)  # clamped for small data
    assert all(len(r) == n // g_eff == len(ShardedBatchSampler(n, g, 0, w, seed)) for r in ranks)
    assert all(len(b) == g_eff // w for r in ranks for b in r)
    flat = [i for r in ranks for b in r for i in b]
    assert len(flat) == len(set(flat)) and all(0 <= i < n for i in flat)  # disjoint, in range
    perm = np.random.default_rng(seed + epoch).permutation(n)
    for k in range(n // g_eff):  # global batch k = the ranks' slices in rank order
        assert [i for r in ranks for i in r[k]] == perm[k * g_eff : (k + 1) * g_eff].tolist()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 100), per_rank=st.integers(1, 8), w=st.integers(1, 4))
def test_keeping_the_tail_covers_every_example(n: int, per_rank: int, w: int) -> None:
    ranks = _epoch(n, per_rank * w, w, seed=0, epoch=0, drop_last=False)
    counts = {len(r) for r in ranks}
    assert len(counts) == 1  # equal number of batches per rank
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[-1]]  # equal sizes batch by batch
    flat = [i for r in ranks for b in r for i in b]
    assert set(flat) == set(range(n)) and len(flat) - n < w  # at most w - 1 wrap-around repeats


def test_epochs_reshuffle_and_seeds_repeat() -> None:
    a, b = _epoch(64, 16, 2, seed=5, epoch=0), _epoch(64, 16, 2, seed=5, epoch=1)
    assert a != b and a == _epoch(64, 16, 2, seed=5, epoch=0)
    assert a != _epoch(64, 16, 2, seed=6, epoch=0)


def test_bad_sampler_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of the world size 4"):
        ShardedBatchSampler(100, 10, 0, 4, 0)
    with pytest.raises(ValueError, match="rank 2"):
        ShardedBatchSampler(100, 8, 2, 2, 0)


def test_collate_shapes_and_mask() -> None:
    b = collate(np.array([[0, 0, 3], [1, 2, 3]]), np.array([4, 5]), np.array([7, 8]))
    assert b.histories.dtype == torch.int64 and b.histories.shape == (2, 3)
    assert b.history_mask.tolist() == [[False, False, True], [True, True, True]]
    assert b.targets.tolist() == [4, 5] and b.user_ids.tolist() == [7, 8] and len(b) == 2
    moved = b.to("cpu")
    assert torch.equal(moved.histories, b.histories) and moved.history_mask.dtype == torch.bool


def _examples(n: int, length: int = 3) -> TrainExamples:
    rng = np.random.default_rng(0)
    hist = rng.integers(1, 50, (n, length))
    hist[:, 0] = 0  # one padding column
    return TrainExamples(np.arange(n) + 100, hist, np.arange(n) + 1000)


def test_train_loader_yields_matching_rows() -> None:
    ex = _examples(40)
    loaders = [train_loader(ex, 8, rank, 2, seed=1) for rank in range(2)]
    seen: list[int] = []
    for loader in loaders:
        loader.batch_sampler.set_epoch(2)  # type: ignore[union-attr]
        batches = list(loader)
        assert len(batches) == 5
        for b in batches:
            assert b.histories.shape == (4, 3) and b.history_mask[:, 0].sum() == 0
            rows = (b.targets - 1000).numpy()  # target encodes the row
            assert np.array_equal(b.histories.numpy(), ex.histories[rows])
            assert np.array_equal(b.user_ids.numpy(), ex.user_ids[rows])
            seen += rows.tolist()
    assert sorted(seen) == list(range(40))


def test_train_loader_clamps_small_data() -> None:
    batches = list(train_loader(_examples(5), 256, rank=0, world_size=2, seed=0))
    assert [len(b) for b in batches] == [2]  # global batch clamped to 4 = 2 ranks x 2


def test_train_loader_with_a_worker_process() -> None:
    ex = _examples(16)
    single = [b.targets.tolist() for b in train_loader(ex, 4, 0, 1, seed=3)]
    worker = [b.targets.tolist() for b in train_loader(ex, 4, 0, 1, seed=3, num_workers=1)]
    assert single == worker


def test_eval_batches_in_order(tiny_dataset: PreparedDataset) -> None:
    test = make_splits(tiny_dataset.interactions, 4, 3).test
    batches = list(eval_batches(test, 25))
    assert [len(b) for b in batches] == [25, 25, 10]
    assert torch.cat([b.user_ids for b in batches]).tolist() == test.user_ids.tolist()
    assert torch.equal(torch.cat([b.histories for b in batches]), torch.from_numpy(test.histories))
    assert torch.equal(
        torch.cat([b.history_mask for b in batches]), torch.from_numpy(test.histories > 0)
    )
    with pytest.raises(ValueError, match="batch_size"):
        next(eval_batches(test, 0))
