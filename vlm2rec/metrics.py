r"""Ranking metrics as pure functions of where each target landed (docs/METHOD.md §1).

Every evaluated user has exactly one held-out target (leave-one-out), so each metric is a mean over
users of a gain :math:`g(r_u)` of that target's 1-based rank (1 = top) among its candidates:

.. math::

    \mathrm{Recall@}k:\ g(r) = [r \le k], \qquad
    \mathrm{NDCG@}k:\ g(r) = \frac{[r \le k]}{\log_2(r + 1)}, \qquad
    \mathrm{MRR}:\ g(r) = \frac{1}{r}

With a single relevant item the ideal DCG is 1, so NDCG needs no normalisation, and Recall@k equals
the hit rate HR@k.

**Ties.** A target with :math:`a` candidates scored strictly above it and :math:`t` others scored
exactly as it is passed as ``ranks = a + 1`` and ``ties = t``. Breaking the ties uniformly at random
puts it at each rank :math:`a+1, \dots, a+t+1` with probability :math:`1/(t+1)`, so its gain is the
exact expectation

.. math:: \bar g = \frac{1}{t+1} \sum_{r=a+1}^{a+t+1} g(r) = \frac{G(a+t+1) - G(a)}{t+1},
          \qquad G(n) = \sum_{r=1}^{n} g(r)

(:math:`G` is :math:`\min(n, k)` for Recall@k, a prefix sum of :math:`k` terms for NDCG@k and the
harmonic number :math:`H_n = \psi(n+1) + \gamma` for MRR). Constant scores therefore score at the
random level and a view whose items share texts is not zeroed. ``ties=None`` means no ties: the
rank is exact (pessimistic tie handling passes ``ranks = a + t + 1`` and no ties).

**Misses.** ``ranks = 0`` marks a target that is not among its candidates (the history mask excluded
it because it repeats an earlier item): its gain is 0 for every metric.

========================  ====================================
symbol                    argument
========================  ====================================
:math:`a + 1` (or 0)      ``ranks[u]``
:math:`t`                 ``ties[u]``
:math:`k`                 ``k``
:math:`U`                 ``len(ranks)``
========================  ====================================

Shapes: ``ranks`` and ``ties`` are ``[U]`` integer tensors, ``ranks >= 0``, ``ties >= 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_KS", "MISS", "mrr", "ndcg_at_k", "ranking_metrics", "recall_at_k"]

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)  #: cut-offs of the reported metrics
MISS = 0  #: the rank of a target that is not a candidate (excluded by the mask): gain 0
_EULER_GAMMA = 0.5772156649015329  # H_n = digamma(n + 1) + gamma


def _checked(ranks: Tensor, ties: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validate ``ranks``/``ties``; return both as float64 (exact for counts < 2**53)."""
    for name, x in (("ranks", ranks), ("ties", ties)):
        if x is None:
            continue
        if x.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D tensor [U], got shape {tuple(x.shape)}")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"{name}: expected an integer tensor, got dtype {x.dtype}")
        if x.numel() and int(x.min()) < 0:
            raise ValueError(f"{name}: expected counts >= 0, found {int(x.min())}")
    if ranks.numel() == 0:
        raise ValueError("ranks: expected at least one user, got an empty tensor")
    if ties is not None and ties.shape != ranks.shape:
        raise ValueError(f"ties: expected shape {tuple(ranks.shape)}, got {tuple(ties.shape)}")
    r = ranks.to(torch.float64)
    return r, torch.zeros_like(r) if ties is None else ties.to(torch.float64, copy=False)


def _mean_gain(
    ranks: Tensor, ties: Tensor | None, exact: Callable[[Tensor], Tensor],
    cumulative: Callable[[Tensor], Tensor],
) -> float:  # fmt: skip
    r"""Mean over users of :math:`\bar g` (module docstring); ``exact(r) = g(r)`` serves untied
    targets (no rounding from a difference of sums), ``cumulative(n) = G(n)`` tied ones."""
    r, t = _checked(ranks, ties)
    hit = r > 0  # MISS (0) gains nothing
    safe = torch.where(hit, r, torch.ones_like(r))
    spread = (cumulative(safe + t) - cumulative(safe - 1)) / (t + 1)  # [U]
    gain = torch.where(t > 0, spread, exact(safe))
    return float(torch.where(hit, gain, torch.zeros_like(gain)).mean())


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k: expected a cut-off >= 1, got {k}")


def recall_at_k(ranks: Tensor, k: int, ties: Tensor | None = None) -> float:
    r"""Recall@k :math:`= \frac1U \sum_u [r_u \le k]` (one target per user, so equal to HR@k),
    in expectation over random tie-breaking when ``ties`` is given.

    Shapes: ``ranks``, ``ties`` ``[U]``.
    """
    _check_k(k)
    return _mean_gain(ranks, ties, lambda r: (r <= k).to(torch.float64), lambda n: n.clamp(max=k))


def ndcg_at_k(ranks: Tensor, k: int, ties: Tensor | None = None) -> float:
    r"""NDCG@k :math:`= \frac1U \sum_u [r_u \le k] / \log_2(r_u + 1)` (ideal DCG of one target is
    1), in expectation over random tie-breaking when ``ties`` is given.

    Shapes: ``ranks``, ``ties`` ``[U]``.
    """
    _check_k(k)
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))  # [k]: g(1..k)
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), discounts.cumsum(0)])  # [k + 1]: G

    def exact(r: Tensor) -> Tensor:
        return torch.where(r <= k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))

    return _mean_gain(ranks, ties, exact, lambda n: prefix[n.clamp(max=k).long()])


def mrr(ranks: Tensor, ties: Tensor | None = None) -> float:
    r"""Mean reciprocal rank :math:`= \frac1U \sum_u 1 / r_u` (no cut-off), in expectation over
    random tie-breaking when ``ties`` is given (:math:`G(n) = H_n = \psi(n + 1) + \gamma`).

    Shapes: ``ranks``, ``ties`` ``[U]``.
    """

    def harmonic(n: Tensor) -> Tensor:
        return torch.where(n > 0, torch.digamma(n + 1.0) + _EULER_GAMMA, torch.zeros_like(n))

    return _mean_gain(ranks, ties, lambda r: 1.0 / r, harmonic)


def ranking_metrics(
    ranks: Tensor,
    prefix: str,
    ks: Sequence[int] = DEFAULT_KS,
    suffix: str = "",
    ties: Tensor | None = None,
) -> dict[str, float]:
    """All ranking metrics under their one name (docs/ARCHITECTURE.md, "one name per number").

    Keys are ``{prefix}/recall@{k}{sfx}`` and ``{prefix}/ndcg@{k}{sfx}`` for each ``k`` in ``ks``,
    then ``{prefix}/mrr{sfx}``, where ``sfx`` is ``""`` for an empty ``suffix`` and ``"/" + suffix``
    otherwise: ``ranking_metrics(r, "val", suffix="image")`` gives ``"val/ndcg@10/image"``. A
    leading ``/`` in ``suffix`` is accepted and not doubled. ``ties`` as in the module docstring.

    Shapes: ``ranks``, ``ties`` ``[U]`` integer.
    """
    if not prefix or prefix.endswith("/"):
        raise ValueError(f"prefix: expected a split name such as 'val', got {prefix!r}")
    view = suffix.lstrip("/")
    sfx = f"/{view}" if view else ""
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}/recall@{k}{sfx}"] = recall_at_k(ranks, k, ties)
        out[f"{prefix}/ndcg@{k}{sfx}"] = ndcg_at_k(ranks, k, ties)
    out[f"{prefix}/mrr{sfx}"] = mrr(ranks, ties)
    return out
