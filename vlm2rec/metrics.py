r"""Ranking metrics as pure functions of the target's 1-based rank (METHOD.md §1, DESIGN.md rule 2).

Every evaluated user has exactly one held-out target (leave-one-out), so each metric is a mean over
users of a function of that target's rank :math:`r_u \in \{1, 2, \dots\}` (1 = top) among the full
catalogue minus the user's history (:mod:`vlm2rec.evaluate` produces the ranks, with pessimistic ties).

.. math::

    \mathrm{Recall@}k = \frac{1}{U}\sum_u [r_u \le k], \qquad
    \mathrm{NDCG@}k = \frac{1}{U}\sum_u \frac{[r_u \le k]}{\log_2(r_u + 1)}, \qquad
    \mathrm{MRR} = \frac{1}{U}\sum_u \frac{1}{r_u}

With a single relevant item the ideal DCG is 1, so NDCG needs no normalisation, and Recall@k equals
the hit rate HR@k.

========================  ============
symbol                    argument
========================  ============
:math:`r_u`               ``ranks[u]``
:math:`k`                 ``k``
:math:`U`                 ``len(ranks)``
========================  ============

Shapes: ``ranks`` is ``[U]`` (integer, every entry >= 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_KS", "mrr", "ndcg_at_k", "ranking_metrics", "recall_at_k"]

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)  #: cut-offs of the reported metrics (DESIGN.md rule 2)


def _checked(ranks: Tensor) -> Tensor:
    """Validate ``ranks`` and return it as float64 (exact for ranks < 2**53; means stay precise)."""
    if ranks.dim() != 1:
        raise ValueError(f"ranks: expected a 1-D tensor [U], got shape {tuple(ranks.shape)}")
    if ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool:
        raise ValueError(f"ranks: expected an integer tensor, got dtype {ranks.dtype}")
    if ranks.numel() == 0:
        raise ValueError("ranks: expected at least one user, got an empty tensor")
    low = int(ranks.min())
    if low < 1:
        raise ValueError(f"ranks: expected 1-based ranks (>= 1), found {low}")
    return ranks.to(torch.float64)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k: expected a cut-off >= 1, got {k}")


def recall_at_k(ranks: Tensor, k: int) -> float:
    r"""Recall@k :math:`= \frac1U \sum_u [r_u \le k]` (one target per user, so equal to HR@k).

    Shapes: ``ranks`` ``[U]``.
    """
    _check_k(k)
    r = _checked(ranks)
    return float((r <= k).to(torch.float64).mean())


def ndcg_at_k(ranks: Tensor, k: int) -> float:
    r"""NDCG@k :math:`= \frac1U \sum_u [r_u \le k] / \log_2(r_u + 1)` (ideal DCG of one target is 1).

    Shapes: ``ranks`` ``[U]``.
    """
    _check_k(k)
    r = _checked(ranks)
    gain = torch.where(r <= k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))
    return float(gain.mean())


def mrr(ranks: Tensor) -> float:
    r"""Mean reciprocal rank :math:`= \frac1U \sum_u 1 / r_u` (no cut-off).

    Shapes: ``ranks`` ``[U]``.
    """
    r = _checked(ranks)
    return float((1.0 / r).mean())


def ranking_metrics(
    ranks: Tensor, prefix: str, ks: Sequence[int] = DEFAULT_KS, suffix: str = ""
) -> dict[str, float]:
    """All ranking metrics under their one name (DESIGN.md rule 2).

    Keys are ``{prefix}/recall@{k}{sfx}`` and ``{prefix}/ndcg@{k}{sfx}`` for each ``k`` in ``ks``,
    then ``{prefix}/mrr{sfx}``, where ``sfx`` is ``""`` for an empty ``suffix`` and ``"/" + suffix``
    otherwise: ``ranking_metrics(r, "val", suffix="image")`` gives ``"val/ndcg@10/image"``. A
    leading ``/`` in ``suffix`` is accepted and not doubled.

    Shapes: ``ranks`` ``[U]`` integer, 1-based.
    """
    if not prefix or prefix.endswith("/"):
        raise ValueError(f"prefix: expected a split name such as 'val', got {prefix!r}")
    view = suffix.lstrip("/")
    sfx = f"/{view}" if view else ""
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}/recall@{k}{sfx}"] = recall_at_k(ranks, k)
        out[f"{prefix}/ndcg@{k}{sfx}"] = ndcg_at_k(ranks, k)
    out[f"{prefix}/mrr{sfx}"] = mrr(ranks)
    return out
