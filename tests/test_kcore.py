"""k-core filtering against a brute-force one-node-at-a-time reference on random graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm2rec.data.kcore import kcore_mask, min_length_mask


def _reference_kcore(edges: list[tuple[int, int]], k: int) -> set[int]:
    """Delete one node with degree < k at a time (a different order than the round-based code)."""
    alive = set(range(len(edges)))
    while True:
        deg_u: dict[int, int] = {}
        deg_i: dict[int, int] = {}
        for e in alive:
            u, i = edges[e]
            deg_u[u] = deg_u.get(u, 0) + 1
            deg_i[i] = deg_i.get(i, 0) + 1
        weak = [("u", u) for u, d in sorted(deg_u.items()) if d < k]
        weak += [("i", i) for i, d in sorted(deg_i.items()) if d < k]
        if not weak:
            return alive
        side, node = weak[-1]  # remove a single node, the last one found
        alive = {e for e in alive if edges[e][0 if side == "u" else 1] != node}


graphs = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), min_size=0, max_size=60)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(edges=graphs, k=st.integers(0, 5))
def test_kcore_matches_bruteforce(edges: list[tuple[int, int]], k: int) -> None:
    users = np.array([u for u, _ in edges], dtype=np.int64)
    items = np.array([i for _, i in edges], dtype=np.int64)
    mask = kcore_mask(users, items, k)
    assert set(np.flatnonzero(mask).tolist()) == _reference_kcore(edges, k)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(edges=graphs, k=st.integers(2, 4))
def test_kcore_result_is_a_fixed_point(edges: list[tuple[int, int]], k: int) -> None:
    users = np.array([f"user{u}" for u, _ in edges], dtype=object).astype(str)
    items = np.array([f"item{i}" for _, i in edges], dtype=object).astype(str)
    mask = kcore_mask(users, items, k)
    kept_u, kept_i = users[mask], items[mask]
    for ids in (kept_u, kept_i):
        _, counts = np.unique(ids, return_counts=True)
        assert (counts >= k).all()
    assert kcore_mask(kept_u, kept_i, k).all()  # filtering the core again changes nothing


def test_kcore_needs_more_than_one_round() -> None:
    # u0 holds i0 and i1 twice each; u1 has a single i1 edge. k=2: u1 goes in round 1,
    # nothing else does. Then a chain: u2-i2 (x2) and u2-i3 (x1) -> i3 goes, leaving u2 with 2.
    users = np.array([0, 0, 0, 0, 1, 2, 2, 2, 3, 3, 4])
    items = np.array([0, 0, 1, 1, 1, 2, 2, 3, 4, 5, 5])
    # round 1 drops u1 (1 edge), i3 (1 edge), i4 (1 edge), u4 (1 edge);
    # round 2 then finds u3 with one edge (i5) and i5 with one edge (u3): both go.
    mask = kcore_mask(users, items, 2)
    assert mask.tolist() == [True] * 4 + [False] + [True, True, False] + [False] * 3


def test_kcore_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="equal length"):
        kcore_mask(np.arange(3), np.arange(4), 2)


def test_min_length_mask() -> None:
    users = np.array(["a", "b", "a", "c", "a", "b"])
    assert min_length_mask(users, 2).tolist() == [True, True, True, False, True, True]
    assert min_length_mask(users, 3).tolist() == [True, False, True, False, True, False]
    assert min_length_mask(np.array([], dtype=str), 3).tolist() == []
