"""The generator's oracles: a proper posterior, a Monte-Carlo check against fresh users, the views."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from vlm2rec.config import EvalConfig, SyntheticConfig
from vlm2rec.data.oracle import oracle_metrics, posterior, view_scores
from vlm2rec.data.splits import EvalExamples, make_splits
from vlm2rec.data.synthetic import build_synthetic, item_attributes

#: the collapse setting's grid (8 shapes x 8 brands x 2 colours x 2 copies), short sequences
GRID = SyntheticConfig(users=400, items=256, min_length=5, max_length=12, image_size=8)


def _examples(cfg: SyntheticConfig, split: str = "test", history: int = 3) -> EvalExamples:
    _, inter, _ = build_synthetic(cfg)
    return getattr(make_splits(inter, history, 3), split)  # type: ignore[no-any-return]


def _candidates(examples: EvalExamples, n_items: int) -> np.ndarray:
    """``[U, N + 1]`` bool: the items not met before the target (column 0 = padding: never)."""
    out = np.ones((len(examples), n_items + 1), dtype=bool)
    out[:, 0] = False
    out[np.repeat(np.arange(len(examples)), np.diff(examples.seen_indptr)), examples.seen_items] = 0
    return out


def _expected_ndcg10(scores: np.ndarray, post: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """``[U]`` E_{j ~ post}[NDCG@10 of j] under ``scores`` with random tie-breaking (a loop)."""
    prefix = np.concatenate([[0.0], np.cumsum(1 / np.log2(np.arange(2, 12)))])
    out = np.zeros(len(scores))
    for u in range(len(scores)):
        s, p = scores[u, cand[u]], post[u, cand[u]]
        order = np.sort(s)
        above = len(s) - np.searchsorted(order, s, side="right")
        ties = len(s) - np.searchsorted(order, s, side="left") - above - 1
        gain = (prefix[np.minimum(above + ties + 1, 10)] - prefix[np.minimum(above, 10)]) / (
            ties + 1
        )
        out[u] = float((p * gain).sum())
    return out


def test_posterior_is_a_distribution_over_unseen_items() -> None:
    examples = _examples(GRID)
    post = posterior(GRID, examples)
    cand = _candidates(examples, GRID.items)
    assert post.shape == (len(examples), GRID.items + 1)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-12)
    assert (post[~cand] == 0).all() and (post[cand] > 0).all()
    # Items of one cell are exchangeable: they get bit-equal probabilities (exact ties).
    attrs = item_attributes(GRID)
    cell = (attrs[1:, 0] * GRID.brands + attrs[1:, 1]) * GRID.colours + attrs[1:, 2]
    for u in range(20):
        for c in np.unique(cell):
            values = post[u, 1:][(cell == c) & cand[u, 1:]]
            assert len(set(values.tolist())) <= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [
        dataclasses.replace(GRID, users=6000, seed=11),  # the collapse setting's grid
        # "keep" with one colour revisits cells, so the fallback chain does much of the work
        SyntheticConfig(
            users=5000, items=64, colours=1, max_length=12, transition="keep", image_size=8, seed=12
        ),
    ],
    ids=["permutation", "keep-fallback"],
)
def test_oracle_matches_a_monte_carlo_estimate_from_fresh_users(cfg: SyntheticConfig) -> None:
    """The posterior's own expectation of its NDCG@10 equals what it scores on freshly simulated
    targets, for the full oracle and for the single-view ones (within 4 standard errors)."""
    examples = _examples(cfg)
    post = posterior(cfg, examples)
    cand = _candidates(examples, cfg.items)
    measured = oracle_metrics(cfg, examples, "test", EvalConfig())
    for view, key in (("both", ""), ("text", "/text"), ("image", "/image")):
        scores = view_scores(cfg, examples, post, view, "all")
        expected = _expected_ndcg10(scores, post, cand)
        # per-user gains are in [0, 1]: their variance is at most mean * (1 - mean)
        se = math.sqrt(expected.mean() * (1 - expected.mean()) / len(expected))
        got = measured[f"test/oracle/ndcg@10{key}"]
        assert abs(got - expected.mean()) < 4 * se, (view, got, expected.mean(), se)


def test_single_view_oracles_cannot_tell_their_groups_apart() -> None:
    examples = _examples(GRID, "val")
    post = posterior(GRID, examples)
    attrs = item_attributes(GRID)
    for view, cols in (("text", [1, 2]), ("image", [0, 2])):
        scores = view_scores(GRID, examples, post, view, "all")
        for u in range(10):
            groups: dict[tuple[int, ...], set[float]] = {}
            for j in range(1, GRID.items + 1):
                groups.setdefault(tuple(attrs[j, cols].tolist()), set()).add(float(scores[u, j]))
            assert all(len(v) == 1 for v in groups.values())
        # a group's score is the mean probability of its candidates: the total mass is kept
        np.testing.assert_allclose(
            (scores * _candidates(examples, GRID.items)).sum(1), 1.0, atol=1e-9
        )


def test_oracle_keys_and_order() -> None:
    examples = _examples(GRID, "val")
    got = oracle_metrics(GRID, examples, "val", EvalConfig())
    views = ("", "/text", "/image")
    assert set(got) == {f"val/oracle/{m}@10{v}" for m in ("recall", "ndcg") for v in views}
    for v in views:
        assert 0 < got[f"val/oracle/ndcg@10{v}"] <= got[f"val/oracle/recall@10{v}"] <= 1
    # the full posterior beats each single view by far on the collapse grid
    assert got["val/oracle/ndcg@10"] - got["val/oracle/ndcg@10/text"] > 0.3
    assert got["val/oracle/ndcg@10"] - got["val/oracle/ndcg@10/image"] > 0.3
    # pessimistic ties zero the text-only oracle: 16 items share each text (why "expected")
    pessimistic = oracle_metrics(GRID, examples, "val", EvalConfig(ties="pessimistic"))
    assert pessimistic["val/oracle/ndcg@10/text"] == 0.0
