"""Leave-one-out splits: hand cases, edge cases and a slow per-user reference on random data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm2rec.data.schema import PreparedDataset
from vlm2rec.data.splits import EvalExamples, make_splits, user_sequences


def _table(sequences: dict[int, list[int]], shuffle_seed: int | None = None) -> pa.Table:
    """Interactions with timestamps 10, 20, ... per user, optionally with rows shuffled."""
    rows = [(u, i, 10 * (t + 1)) for u, seq in sequences.items() for t, i in enumerate(seq)]
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(rows))
        rows = [rows[k] for k in order]
    users, items, times = zip(*rows, strict=True)
    return pa.table({"user_id": users, "item_id": items, "timestamp": times})


def _history(seq: list[int], end: int, length: int) -> list[int]:
    """Reference: the ``length`` items before position ``end`` (0-based), left-padded with 0."""
    before = seq[max(0, end - length) : end]
    return [0] * (length - len(before)) + before


def test_hand_case() -> None:
    s = make_splits(_table({7: [5, 6, 7, 8, 9]}), history_length=2, min_length=3)
    assert s.test.histories.tolist() == [[7, 8]] and s.test.targets.tolist() == [9]
    assert s.val.histories.tolist() == [[6, 7]] and s.val.targets.tolist() == [8]
    assert s.train.histories.tolist() == [[0, 5], [5, 6]]
    assert s.train.targets.tolist() == [6, 7] and s.train.user_ids.tolist() == [7, 7]
    assert s.test.user_ids.tolist() == [7] and s.test.seen(0).tolist() == [5, 6, 7, 8]
    assert s.val.seen(0).tolist() == [5, 6, 7]


def test_user_with_exactly_three_items_has_no_training_examples() -> None:
    s = make_splits(_table({1: [4, 5, 6]}), history_length=4, min_length=3)
    assert len(s.train) == 0 and s.train.histories.shape == (0, 4)
    assert s.val.histories.tolist() == [[0, 0, 0, 4]] and s.val.targets.tolist() == [5]
    assert s.test.histories.tolist() == [[0, 0, 4, 5]] and s.test.targets.tolist() == [6]


def test_history_longer_than_l_keeps_the_newest_last() -> None:
    seq = list(range(1, 11))
    s = make_splits(_table({3: seq}), history_length=3, min_length=3)
    assert s.test.histories.tolist() == [[7, 8, 9]]
    assert s.train.histories[-1].tolist() == [5, 6, 7] and s.train.targets[-1] == 8


def test_seen_never_looks_at_the_target() -> None:
    s = make_splits(_table({1: [1, 2, 1, 3, 1], 2: [4, 4, 4]}), history_length=2, min_length=3)
    assert s.test.targets.tolist() == [1, 4]
    assert s.test.seen(0).tolist() == [1, 2, 3]  # item 1 was met before: a repeat, excluded
    assert s.val.seen(0).tolist() == [1, 2]  # val target 3: the earlier 1 appears once (unique)
    assert s.test.seen(1).tolist() == [4] and s.val.seen(1).tolist() == [4]
    assert s.test.repeats.tolist() == [True, True] and s.val.repeats.tolist() == [False, True]
    indptr, items = s.test.excluded("all")
    assert indptr.tolist() == [0, 3, 4] and items.tolist() == [1, 2, 3, 4]
    indptr, items = s.test.excluded("none")
    assert indptr.tolist() == [0, 0, 0] and items.tolist() == []
    with pytest.raises(ValueError, match=r"eval\.exclude_seen"):
        s.test.excluded("target")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=3, max_size=10), st.integers(1, 6))
def test_the_mask_is_the_same_whatever_the_target(seq: list[int], other: int) -> None:
    a = make_splits(_table({1: seq}), 2, 3).test
    b = make_splits(_table({1: [*seq[:-1], other]}), 2, 3).test
    assert a.seen(0).tolist() == b.seen(0).tolist() == sorted(set(seq[:-1]))
    assert bool(a.repeats[0]) == (seq[-1] in seq[:-1])


def test_short_users_dropped_and_row_order_irrelevant() -> None:
    seqs = {1: [1, 2], 2: [3, 4, 5, 6], 3: [7, 8, 9]}
    ids, kept = user_sequences(_table(seqs, shuffle_seed=0), min_length=3)
    assert ids.tolist() == [2, 3] and [k.tolist() for k in kept] == [[3, 4, 5, 6], [7, 8, 9]]
    a, b = make_splits(_table(seqs), 2, 4), make_splits(_table(seqs, shuffle_seed=1), 2, 4)
    assert a.test.user_ids.tolist() == [2]
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert np.array_equal(x.histories, y.histories) and np.array_equal(x.targets, y.targets)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="min_length must be >= 3"):
        make_splits(_table({1: [1, 2, 3]}), 2, 2)
    with pytest.raises(ValueError, match="no user has >= 5"):
        make_splits(_table({1: [1, 2, 3]}), 2, 5)
    empty = pa.table({n: pa.array([], pa.int64()) for n in ("user_id", "item_id", "timestamp")})
    with pytest.raises(ValueError, match="no user has >= 3"):
        make_splits(empty, 2, 3)
    with pytest.raises(ValueError, match="missing column 'timestamp'"):
        make_splits(pa.table({"user_id": [1], "item_id": [1]}), 2, 3)


@settings(max_examples=40, deadline=None)
@given(
    seqs=st.dictionaries(
        st.integers(0, 30),
        st.lists(st.integers(1, 6), min_size=1, max_size=12),
        min_size=1,
        max_size=8,
    ),
    length=st.integers(1, 5),
    min_length=st.integers(3, 5),
)
def test_matches_a_per_user_reference(
    seqs: dict[int, list[int]], length: int, min_length: int
) -> None:
    kept = {u: s for u, s in sorted(seqs.items()) if len(s) >= min_length}
    if not kept:
        return
    s = make_splits(_table(seqs, shuffle_seed=0), length, min_length)
    train = [
        (u, _history(q, t, length), q[t]) for u, q in kept.items() for t in range(1, len(q) - 2)
    ]
    assert s.train.user_ids.tolist() == [u for u, _, _ in train]
    assert s.train.histories.reshape(-1, length).tolist() == [h for _, h, _ in train]
    assert s.train.targets.tolist() == [t for _, _, t in train]
    for ex, back in ((s.val, 2), (s.test, 1)):
        assert ex.user_ids.tolist() == list(kept)
        for row, q in enumerate(kept.values()):
            end = len(q) - back
            assert ex.histories[row].tolist() == _history(q, end, length)
            assert ex.targets[row] == q[end]
            assert ex.seen(row).tolist() == sorted(set(q[:end]))
            assert ex.repeats[row] == (q[end] in q[:end])


def _as_rows(ex: EvalExamples) -> list[tuple[int, list[int], int, list[int]]]:
    return [
        (int(ex.user_ids[r]), ex.histories[r].tolist(), int(ex.targets[r]), ex.seen(r).tolist())
        for r in range(len(ex))
    ]


def test_subsample_is_a_seeded_subset(tiny_dataset: PreparedDataset) -> None:
    val = make_splits(tiny_dataset.interactions, 4, 3).val
    assert val.subsample(len(val), 0) is val and val.subsample(0, 0) is val
    sub = val.subsample(10, seed=3)
    assert len(sub) == 10 and np.all(np.diff(sub.user_ids) > 0)  # original order kept
    full = {row[0]: row for row in _as_rows(val)}
    assert all(full[row[0]] == row for row in _as_rows(sub))  # rows and seen sets intact
    assert np.array_equal(val.subsample(10, seed=3).user_ids, sub.user_ids)
    assert not np.array_equal(val.subsample(10, seed=4).user_ids, sub.user_ids)
    assert sub.seen_indptr[-1] == len(sub.seen_items)


def test_counts_on_the_tiny_dataset(tiny_dataset: PreparedDataset) -> None:
    s = make_splits(tiny_dataset.interactions, 4, 3)
    n = tiny_dataset.interactions.num_rows
    assert len(s.val) == len(s.test) == 60
    assert len(s.train) == n - 3 * 60  # every position but the first and the two held out
    assert s.train.histories.dtype == np.int64 and s.train.histories.shape == (len(s.train), 4)
    assert (s.train.histories[:, -1] > 0).all()  # the newest slot is never padding


def test_sampled_negatives_avoid_the_target_and_the_mask(tiny_dataset: PreparedDataset) -> None:
    val = make_splits(tiny_dataset.interactions, 4, 3).val
    neg = val.sample_negatives(10, 32, "all", seed=7)
    assert neg.shape == (len(val), 10) and neg.min() >= 1 and neg.max() <= 32
    for row in range(len(val)):
        assert len(set(neg[row].tolist())) == 10  # distinct
        assert not set(neg[row].tolist()) & {*val.seen(row).tolist(), int(val.targets[row])}
    assert np.array_equal(neg, val.sample_negatives(10, 32, "all", seed=7))  # fixed
    assert not np.array_equal(neg, val.sample_negatives(10, 32, "all", seed=8))
    sub = val.subsample(10, seed=1)  # a user's negatives do not depend on who else is scored
    rows = np.searchsorted(val.user_ids, sub.user_ids)
    assert np.array_equal(sub.sample_negatives(10, 32, "all", seed=7), neg[rows])
    none = val.sample_negatives(10, 32, "none", seed=7)
    assert all(int(val.targets[r]) not in none[r] for r in range(len(val)))
    with pytest.raises(ValueError, match=r"eval.sampled_negatives = 31: user \d+ has only \d+"):
        val.sample_negatives(31, 32, "all", seed=7)
