r"""Model-free rankers every result must beat, scored through the project's own evaluation.

A benchmark that one of these wins, or on which a trained model beats the generator's oracle
(:mod:`vlm2rec.data.oracle`), is broken: the number measures the protocol, not the model.

* ``random``: every candidate scores the same; with ``eval.ties = "expected"`` that is the exact
  expectation of a uniformly random ranking, :math:`\mathrm{Recall@}k = k / |C_u|`.
* ``popularity``: :math:`s_j` = how many users met item :math:`j` before their validation target
  (the training interactions, so neither split leaks).
* ``history``: "copy the history": :math:`s_j = 1` for the items of the visible history, else 0.
  Under ``eval.exclude_seen = "all"`` those items are not candidates, so it equals ``random``;
  under ``"none"`` it shows what repeats are worth on the data.

Keys: ``{split}/baseline/{name}/{recall,ndcg}@k`` and ``.../mrr`` (every cut-off of
:data:`vlm2rec.metrics.DEFAULT_KS`).

Shapes: scores ``[U, N + 1]`` float64 (column 0 = padding).
"""

from __future__ import annotations

import numpy as np
import torch

from vlm2rec.config import EvalConfig
from vlm2rec.data.splits import EvalExamples, Splits
from vlm2rec.ranking import rank_scores

__all__ = ["BASELINES", "baseline_metrics", "baseline_scores"]

BASELINES: tuple[str, ...] = ("random", "popularity", "history")


def baseline_scores(name: str, splits: Splits, examples: EvalExamples, n_items: int) -> np.ndarray:
    """``[U, N + 1]`` scores of baseline ``name`` for ``examples`` (one of :data:`BASELINES`)."""
    n_users = len(examples)
    if name == "random":
        return np.zeros((n_users, n_items + 1))
    if name == "popularity":
        # splits.val's seen sets are every user's training prefix: counts that leak no target
        counts = np.bincount(splits.val.seen_items, minlength=n_items + 1).astype(np.float64)
        return np.broadcast_to(counts, (n_users, n_items + 1)).copy()
    if name == "history":
        scores = np.zeros((n_users, n_items + 1))
        rows = np.repeat(np.arange(n_users), examples.histories.shape[1])
        scores[rows, examples.histories.reshape(-1)] = 1.0
        scores[:, 0] = 0.0  # left padding is not an item
        return scores
    raise ValueError(f"baseline: expected one of {list(BASELINES)}, got {name!r}")


def baseline_metrics(splits: Splits, split: str, n_items: int, cfg: EvalConfig) -> dict[str, float]:
    """Every baseline's ranking metrics on ``split`` (``val`` or ``test``) under ``cfg``'s rules."""
    examples: EvalExamples = getattr(splits, split)
    indptr, excluded = examples.excluded(cfg.exclude_seen)
    out: dict[str, float] = {}
    for name in BASELINES:
        scores = torch.from_numpy(baseline_scores(name, splits, examples, n_items))
        ranks = rank_scores(scores, examples.targets, indptr, excluded)
        out |= ranks.metrics(f"{split}/baseline/{name}", ties=cfg.ties)
    return out
