"""Model-free baselines stay where they must: at the random level, below every oracle."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from vlm2rec.baselines import baseline_metrics, baseline_scores
from vlm2rec.config import EvalConfig, SyntheticConfig
from vlm2rec.data.oracle import oracle_metrics
from vlm2rec.data.splits import make_splits
from vlm2rec.data.synthetic import build_synthetic

#: the default benchmark's knobs (and search_spaces/base/collapse.toml's grid), fewer users
CFG = SyntheticConfig(users=1000, max_length=12, image_size=8)


@pytest.fixture(scope="module")
def scores() -> dict[str, float]:
    _, inter, _ = build_synthetic(CFG)
    splits = make_splits(inter, 3, 3)
    out: dict[str, float] = {}
    for split in ("val", "test"):
        out |= baseline_metrics(splits, split, CFG.items, EvalConfig())
        out |= oracle_metrics(CFG, getattr(splits, split), split, EvalConfig())
    return out


@pytest.mark.parametrize("split", ["val", "test"])
def test_baselines_sit_at_the_random_level_far_below_the_oracles(
    scores: dict[str, float], split: str
) -> None:
    def ndcg(name: str) -> float:
        return scores[f"{split}/{name}/ndcg@10"]

    # about 250 candidates, 10 of them shown: random NDCG@10 = sum_{r<=10} 1/log2(r+1) / |C|
    assert 4.54 / 256 < ndcg("baseline/random") < 4.54 / 240
    # no target repeats its history, and the mask takes the history away: copying is random
    assert ndcg("baseline/history") == ndcg("baseline/random")
    # the generator draws items uniformly within cells: popularity knows next to nothing
    assert abs(ndcg("baseline/popularity") - ndcg("baseline/random")) < 0.01
    text, image = scores[f"{split}/oracle/ndcg@10/text"], scores[f"{split}/oracle/ndcg@10/image"]
    assert min(text, image) > 5 * ndcg("baseline/popularity")
    assert ndcg("oracle") > max(text, image) + 0.3


def test_the_old_leak_would_be_won_by_copying_the_history() -> None:
    """Sparing the target from the mask (the bug this protocol replaces) hands a model-free
    ranker the answer wherever targets repeat: the baselines' test keeps it visible."""
    seqs = {u: [1 + (u + t) % 7 for t in range(6)] + [1 + u % 7] for u in range(50)}  # repeats
    rows = [(u, i, t) for u, seq in seqs.items() for t, i in enumerate(seq)]
    users, items, times = zip(*rows, strict=True)
    inter = pa.table({"user_id": users, "item_id": items, "timestamp": times})
    splits = make_splits(inter, 6, 3)
    assert splits.test.repeats.all()
    history = baseline_scores("history", splits, splits.test, 7)
    assert (history[np.arange(50), splits.test.targets] == 1).all()  # it would rank the target top
    none = baseline_metrics(splits, "test", 7, EvalConfig(exclude_seen="none"))
    assert none["test/baseline/history/recall@5"] > none["test/baseline/random/recall@5"]
    masked = baseline_metrics(splits, "test", 7, EvalConfig())
    assert masked["test/baseline/history/ndcg@10"] == 0.0  # a repeated target is a miss


def test_unknown_baseline_is_named() -> None:
    _, inter, _ = build_synthetic(SyntheticConfig(users=20, items=32, shapes=4, brands=4))
    splits = make_splits(inter, 3, 3)
    with pytest.raises(ValueError, match="baseline: expected one of"):
        baseline_scores("oracle", splits, splits.val, 32)
