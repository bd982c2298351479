"""Ranking metrics against hand computations and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm2rec.metrics import MISS, mrr, ndcg_at_k, ranking_metrics, recall_at_k

RANKS = torch.tensor([1, 3, 6, 11, 25])


def test_recall_by_hand() -> None:
    assert recall_at_k(RANKS, 5) == pytest.approx(2 / 5)
    assert recall_at_k(RANKS, 10) == pytest.approx(3 / 5)
    assert recall_at_k(RANKS, 20) == pytest.approx(4 / 5)
    assert recall_at_k(RANKS, 1) == pytest.approx(1 / 5)


def test_ndcg_by_hand() -> None:
    # rank 1 -> 1/log2(2) = 1; rank 3 -> 1/log2(4) = 0.5; rank 6 -> 1/log2(7); rank 11 -> 1/log2(12)
    assert ndcg_at_k(RANKS, 5) == pytest.approx((1.0 + 0.5) / 5)
    assert ndcg_at_k(RANKS, 10) == pytest.approx((1.0 + 0.5 + 1 / math.log2(7)) / 5)
    assert ndcg_at_k(RANKS, 20) == pytest.approx(
        (1.0 + 0.5 + 1 / math.log2(7) + 1 / math.log2(12)) / 5
    )


def test_mrr_by_hand() -> None:
    assert mrr(RANKS) == pytest.approx((1 + 1 / 3 + 1 / 6 + 1 / 11 + 1 / 25) / 5)


def test_rank_exactly_k_counts() -> None:
    ranks = torch.tensor([10])
    assert recall_at_k(ranks, 10) == 1.0
    assert ndcg_at_k(ranks, 10) == pytest.approx(1 / math.log2(11))
    assert recall_at_k(ranks, 9) == 0.0
    assert ndcg_at_k(ranks, 9) == 0.0


def test_ranking_metrics_keys_and_values() -> None:
    out = ranking_metrics(RANKS, "val")
    expected_keys = [f"val/{m}@{k}" for k in (5, 10, 20) for m in ("recall", "ndcg")] + ["val/mrr"]
    assert list(out) == expected_keys
    assert out["val/ndcg@10"] == ndcg_at_k(RANKS, 10)
    assert out["val/recall@20"] == recall_at_k(RANKS, 20)
    assert out["val/mrr"] == mrr(RANKS)


@pytest.mark.parametrize("suffix", ["image", "/image"])
def test_ranking_metrics_suffix_appended(suffix: str) -> None:
    out = ranking_metrics(RANKS, "test", ks=(10,), suffix=suffix)
    assert set(out) == {"test/recall@10/image", "test/ndcg@10/image", "test/mrr/image"}


@pytest.mark.parametrize(
    "bad",
    [torch.tensor([-1, 1]), torch.tensor([1.0, 2.0]), torch.tensor([], dtype=torch.long)],
)
def test_bad_ranks_rejected(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="ranks"):
        mrr(bad)


def test_bad_ties_rejected() -> None:
    with pytest.raises(ValueError, match="ties: expected shape"):
        mrr(RANKS, torch.tensor([0]))
    with pytest.raises(ValueError, match="ties: expected counts >= 0"):
        mrr(RANKS[:1], torch.tensor([-1]))


def test_a_miss_gains_nothing() -> None:
    ranks = torch.tensor([MISS, 1])
    assert recall_at_k(ranks, 10) == 0.5 and ndcg_at_k(ranks, 10) == 0.5 and mrr(ranks) == 0.5
    assert mrr(ranks, torch.tensor([5, 0])) == 0.5  # ties of a miss do not matter


def test_no_ties_equals_exact_ranks() -> None:
    zero = torch.zeros_like(RANKS)
    for k in (1, 5, 10, 20):
        assert ndcg_at_k(RANKS, k, zero) == ndcg_at_k(RANKS, k)
        assert recall_at_k(RANKS, k, zero) == recall_at_k(RANKS, k)
    assert mrr(RANKS, zero) == mrr(RANKS)


def test_constant_scores_give_the_random_level() -> None:
    # 1000 candidates all tied: the target is uniform over ranks 1..1000
    first, ties = torch.tensor([1]), torch.tensor([999])
    assert recall_at_k(first, 10, ties) == pytest.approx(10 / 1000)
    ref = sum(1 / math.log2(r + 1) for r in range(1, 11)) / 1000
    assert ndcg_at_k(first, 10, ties) == pytest.approx(ref)
    assert mrr(first, ties) == pytest.approx(sum(1 / r for r in range(1, 1001)) / 1000)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 40)), min_size=1, max_size=20),
    st.integers(1, 30),
)
def test_expected_ties_match_averaging_every_tie_break(
    pairs: list[tuple[int, int]], k: int
) -> None:
    """Loop reference: the mean over the tie group's ranks a+1..a+t+1, averaged over users."""
    first = torch.tensor([a for a, _ in pairs])
    ties = torch.tensor([t for _, t in pairs])
    gains = {
        "recall": lambda r: float(r <= k),
        "ndcg": lambda r: (r <= k) / math.log2(r + 1),
        "mrr": lambda r: 1 / r,
    }
    for name, fn in (("recall", recall_at_k), ("ndcg", ndcg_at_k), ("mrr", None)):
        ref = sum(
            0.0 if a == 0 else sum(gains[name](r) for r in range(a, a + t + 1)) / (t + 1)
            for a, t in pairs
        ) / len(pairs)
        got = mrr(first, ties) if fn is None else fn(first, k, ties)
        assert got == pytest.approx(ref, abs=1e-12)
    # pessimistic (every tie ahead) <= expected <= optimistic (every tie behind)
    hit = first > 0
    pess = torch.where(hit, first + ties, first)
    assert ndcg_at_k(pess, k) <= ndcg_at_k(first, k, ties) + 1e-12 <= ndcg_at_k(first, k) + 2e-12


def test_bad_k_and_prefix_rejected() -> None:
    with pytest.raises(ValueError, match="k"):
        recall_at_k(RANKS, 0)
    with pytest.raises(ValueError, match="prefix"):
        ranking_metrics(RANKS, "val/")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=50), st.integers(1, 30))
def test_properties(ranks_list: list[int], k: int) -> None:
    ranks = torch.tensor(ranks_list)
    # NDCG@k <= Recall@k (each hit's gain is <= 1) and recall is monotone in k
    assert 0.0 <= ndcg_at_k(ranks, k) <= recall_at_k(ranks, k) + 1e-12
    assert recall_at_k(ranks, k) <= recall_at_k(ranks, k + 1)
    # MRR is bounded below by Recall@k / k (a hit within k contributes at least 1/k)
    assert mrr(ranks) >= recall_at_k(ranks, k) / k - 1e-12
    # a loop reference
    ref = sum(1 / math.log2(r + 1) for r in ranks_list if r <= k) / len(ranks_list)
    assert ndcg_at_k(ranks, k) == pytest.approx(ref)
