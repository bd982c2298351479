r"""Full-ranking evaluation: every catalogue item is a candidate (docs/METHOD.md §1, §7).

For user :math:`u` with sequence embedding :math:`q_u`, held-out target :math:`t_u` and the items
:math:`H_u` excluded from its candidates (``eval.exclude_seen``: every item seen before the target,
or none), the score of item :math:`j` is :math:`s_{uj} = q_u^\top v_j`, the candidates are
:math:`C_u = \{1, \dots, N\} \setminus H_u` and the target's position is described by

.. math::

    a_u = \bigl|\{\, j \in C_u : s_{uj} > s_{ut_u} \,\}\bigr|, \qquad
    g_u = \bigl|\{\, j \in C_u : j \ne t_u,\ s_{uj} = s_{ut_u} \,\}\bigr|

returned as ``first = a + 1`` and ``ties = g`` (:class:`TargetRanks`).

- **Mask rule**: :math:`H_u` is a function of the history alone. A target inside :math:`H_u` (it
  repeats an earlier item) is not a candidate: ``first = 0`` (:data:`vlm2rec.metrics.MISS`), a miss
  for every metric. Row 0 of the item matrix is padding and never a candidate.
- **Tie rules** (``eval.ties``): ``expected`` scores a tied target by the exact expectation of
  random tie-breaking (:mod:`vlm2rec.metrics`), so constant scores land at the random level and a
  single view whose items share texts is not zeroed; ``pessimistic`` ranks every tie ahead
  (rank :math:`a + g + 1`).
- **Exact ties need one GEMM**: a BLAS result depends on the call's shape (measured here: a row-wise
  dot product disagrees with the matrix product in the last bit for most users), so two items with
  identical embeddings could land on either side of the target. Each score block is therefore
  computed as one product of the user block with ``[item chunk; target rows]``, and the target's
  score is read from that same call.

Scores are computed in float32 whatever the input dtype (bf16 scores would manufacture ties), in
blocks of ``user_batch_size x item_chunk``: memory is :math:`O(B \cdot C)`, never users x items, and
no top-k is needed, only two counts per block.

======================  ==========================================================
symbol                  argument
======================  ==========================================================
:math:`q_u`             ``queries[u]``
:math:`v_j`             ``items[j]`` (row 0 = padding)
:math:`t_u`             ``targets[u]``
:math:`H_u`             ``seen_items[seen_indptr[u]:seen_indptr[u + 1]]``
:math:`B`, :math:`C`    ``user_batch_size``, ``item_chunk``
======================  ==========================================================

Shapes: ``queries [U, D]``, ``items [N + 1, D]``, ``targets [U]``, ``seen_indptr [U + 1]``,
``seen_items [nnz]`` (CSR; item ids in ``1..N``); results ``[U]`` int64 on the queries' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from vlm2rec.diagnostics import embedding_diagnostics, modality_diagnostics
from vlm2rec.metrics import DEFAULT_KS, MISS, ranking_metrics

__all__ = [
    "VIEWS",
    "TargetRanks",
    "TieRule",
    "evaluate_views",
    "rank_sampled",
    "rank_scores",
    "rank_targets",
    "sampled_metrics",
    "view_metrics",
]

VIEWS: tuple[str, ...] = ("both", "text", "image")  #: item views; single views get a key suffix
TieRule = Literal["expected", "pessimistic"]  #: ``eval.ties``
SAMPLED_KS: tuple[int, ...] = (10, 20)  #: cut-offs of the sampled protocol

IndexLike = Tensor | np.ndarray[Any, Any] | Sequence[int]  #: index arrays: tensor, numpy or list


class TargetRanks(NamedTuple):
    """Where each target landed among its candidates (module docstring: :math:`a`, :math:`g`)."""

    first: Tensor  #: [U] int64: 1 + candidates scored above the target; 0 = masked (a miss)
    ties: Tensor  #: [U] int64: other candidates scored exactly as the target

    def pessimistic(self) -> Tensor:
        """``[U]`` ranks with every tie counted ahead (0 stays 0: a miss)."""
        return torch.where(self.first > 0, self.first + self.ties, self.first)

    def metrics(
        self,
        split: str,
        suffix: str = "",
        ties: TieRule = "expected",
        ks: Sequence[int] = DEFAULT_KS,
    ) -> dict[str, float]:
        """Every ranking metric of these ranks under ``ties`` (keys as ``ranking_metrics``)."""
        if ties == "expected":
            return ranking_metrics(self.first.cpu(), split, ks, suffix, ties=self.ties.cpu())
        if ties == "pessimistic":
            return ranking_metrics(self.pessimistic().cpu(), split, ks, suffix)
        raise ValueError(f"eval.ties: expected 'expected' or 'pessimistic', got {ties!r}")


def _as_index(x: IndexLike, name: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(x, device=device)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected a 1-D integer array, got {t.dtype} {tuple(t.shape)}")
    return t.to(torch.long)


def _first_bad(mask: Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def _validate(
    queries: Tensor, items: Tensor, targets: Tensor, indptr: Tensor, seen: Tensor
) -> None:
    """Raise ``ValueError`` naming the argument and first offending user/entry."""
    if queries.dim() != 2 or items.dim() != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(
            f"queries [U, D] and items [N + 1, D] must share D; got {tuple(queries.shape)} "
            f"and {tuple(items.shape)}"
        )
    if queries.device != items.device:
        raise ValueError(f"queries on {queries.device} but items on {items.device}; expected one")
    if items.shape[0] < 2:
        raise ValueError("items: expected row 0 (padding) plus at least one item, got 0 items")
    for name, emb in (("queries", queries), ("items", items[1:])):
        if not emb.dtype.is_floating_point or not bool(torch.isfinite(emb).all()):
            raise ValueError(f"{name}: expected finite floating-point embeddings")
    _validate_index(queries.shape[0], items.shape[0] - 1, targets, indptr, seen)


def _validate_index(
    n_users: int, n_items: int, targets: Tensor, indptr: Tensor, seen: Tensor
) -> None:
    """The targets and the CSR of excluded items, against ``n_users`` and ids ``1..n_items``."""
    if targets.shape[0] != n_users:
        raise ValueError(f"targets: expected {n_users} entries (one per query), got {len(targets)}")
    bad = (targets < 1) | (targets > n_items)
    if bool(bad.any()):
        u = _first_bad(bad)
        raise ValueError(f"targets[{u}] = {int(targets[u])}: expected an item id in 1..{n_items}")
    if indptr.shape[0] != n_users + 1 or int(indptr[0]) != 0 or int(indptr[-1]) != len(seen):
        raise ValueError(
            f"seen_indptr: expected {n_users + 1} offsets from 0 to len(seen_items)={len(seen)}, "
            f"got {indptr.shape[0]} offsets ending at {int(indptr[-1]) if len(indptr) else None}"
        )
    if bool((indptr[1:] < indptr[:-1]).any()):
        u = _first_bad(indptr[1:] < indptr[:-1])
        raise ValueError(
            f"seen_indptr: expected non-decreasing offsets, but user {u} has "
            f"seen_indptr[{u + 1}] = {int(indptr[u + 1])} < seen_indptr[{u}] = {int(indptr[u])}"
        )
    bad = (seen < 1) | (seen > n_items)
    if bool(bad.any()):
        i = _first_bad(bad)
        raise ValueError(f"seen_items[{i}] = {int(seen[i])}: expected an item id in 1..{n_items}")


def _mask_(scores: Tensor, rows: Tensor, cand: Tensor, start: int, width: int) -> None:
    """Set ``scores[rows, cand - start] = -inf`` for the candidates inside this chunk, in place.

    Entries outside ``[start, start + width)`` are sent to column ``width`` (the first appended
    target column, already read) instead of being filtered: filtering would need a host sync.
    """
    local = cand - start
    inside = (local >= 0) & (local < width)
    scores[rows, torch.where(inside, local, width)] = float("-inf")


def _tally(scores: Tensor, s_target: Tensor) -> tuple[Tensor, Tensor]:
    """``(strictly above, equal)`` counts per row of a masked ``[B, C]`` score block."""
    # int32 partial sums (a chunk holds < 2**31 items) skip a bool -> int64 copy
    above = (scores > s_target[:, None]).sum(dim=1, dtype=torch.int32)
    level = (scores == s_target[:, None]).sum(dim=1, dtype=torch.int32)
    return above, level


def _count_block(
    queries: Tensor, cand: Tensor, targets0: Tensor, rows: Tensor, seen0: Tensor, item_chunk: int
) -> TargetRanks:
    """Ranks of one user block; ``targets0``/``seen0`` are 0-based candidate indices."""
    q = queries.float()  # [B, D]
    n_users = q.shape[0]
    target_rows = cand[targets0].float()  # [B, D]
    own = torch.arange(n_users, device=q.device)
    above = torch.zeros(n_users, dtype=torch.long, device=q.device)
    level = torch.zeros(n_users, dtype=torch.long, device=q.device)
    for start in range(0, cand.shape[0], item_chunk):
        chunk = cand[start : start + item_chunk].float()  # [C, D]
        width = chunk.shape[0]
        # one GEMM for chunk and targets, so equal embeddings give bit-equal scores
        scores = q @ torch.cat([chunk, target_rows]).T  # [B, C + B]
        s_target = scores[:, width:].diagonal().clone()  # [B]
        _mask_(scores, rows, seen0, start, width)
        _mask_(scores, own, targets0, start, width)  # j != t: the target is not its own tie
        gt, eq = _tally(scores[:, :width], s_target)
        above += gt
        level += eq
    return _ranks(above, level, rows, seen0, targets0)


def _ranks(
    above: Tensor, level: Tensor, rows: Tensor, seen0: Tensor, targets0: Tensor
) -> TargetRanks:
    """A block's counts as :class:`TargetRanks`: a target that the mask excluded is a miss."""
    masked = torch.zeros(len(above), dtype=torch.bool, device=above.device)
    masked[rows[seen0 == targets0[rows]]] = True
    return TargetRanks(torch.where(masked, MISS, above + 1), torch.where(masked, 0, level))


def _block_rows(indptr: Tensor, b0: int, b1: int) -> tuple[Tensor, int, int]:
    """``(rows, lo, hi)``: the block-local user row of each excluded entry of users ``b0:b1``."""
    lo, hi = int(indptr[b0]), int(indptr[b1])
    counts = indptr[b0 + 1 : b1 + 1] - indptr[b0:b1]  # [B] excluded items per user
    rows = torch.repeat_interleave(
        torch.arange(b1 - b0, device=indptr.device), counts, output_size=hi - lo
    )  # [nnz_block]
    return rows, lo, hi


def rank_targets(
    queries: Tensor,
    items: Tensor,
    targets: IndexLike,
    seen_indptr: IndexLike,
    seen_items: IndexLike,
    *,
    user_batch_size: int = 256,
    item_chunk: int = 8192,
) -> TargetRanks:
    r"""Where each user's target lands among its candidates (module docstring: mask and ties).

    ``first`` :math:`= 1 + a_u` (0 when the mask excludes the target), ``ties`` :math:`= g_u`;
    constant scores give ``first = 1``, ``ties = |C_u| - 1``.

    Shapes: ``queries [U, D]``, ``items [N + 1, D]`` (row 0 padding), ``targets [U]``,
    ``seen_indptr [U + 1]``, ``seen_items [nnz]``; returns two ``[U]`` int64 tensors on
    ``queries.device``. Index arrays may be tensors (any device), numpy arrays or lists.
    """
    if user_batch_size < 1 or item_chunk < 1:
        raise ValueError(f"user_batch_size={user_batch_size}, item_chunk={item_chunk}: need >= 1")
    dev = queries.device
    tgt = _as_index(targets, "targets", dev)
    indptr = _as_index(seen_indptr, "seen_indptr", dev)
    seen = _as_index(seen_items, "seen_items", dev)
    _validate(queries, items, tgt, indptr, seen)
    cand = items[1:]  # [N, D]: candidate index j is item id j + 1
    first = torch.empty(queries.shape[0], dtype=torch.long, device=dev)
    ties = torch.empty_like(first)
    for b0 in range(0, queries.shape[0], user_batch_size):
        b1 = min(b0 + user_batch_size, queries.shape[0])
        rows, lo, hi = _block_rows(indptr, b0, b1)
        block = _count_block(
            queries[b0:b1], cand, tgt[b0:b1] - 1, rows, seen[lo:hi] - 1, item_chunk
        )
        first[b0:b1], ties[b0:b1] = block
    return TargetRanks(first, ties)


def rank_scores(
    scores: Tensor,
    targets: IndexLike,
    seen_indptr: IndexLike,
    seen_items: IndexLike,
    *,
    user_batch_size: int = 256,
) -> TargetRanks:
    """:func:`rank_targets` for a score matrix given outright (model-free rankers, oracles).

    Scores keep their dtype (float64 posteriors stay exact); column 0 (padding) is ignored.

    Shapes: ``scores [U, N + 1]``; the rest as :func:`rank_targets`.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores: expected [U, N + 1] with N >= 1, got {tuple(scores.shape)}")
    if not scores.dtype.is_floating_point or not bool(torch.isfinite(scores[:, 1:]).all()):
        raise ValueError("scores: expected finite floating-point values")
    dev = scores.device
    tgt = _as_index(targets, "targets", dev)
    indptr = _as_index(seen_indptr, "seen_indptr", dev)
    seen = _as_index(seen_items, "seen_items", dev)
    _validate_index(scores.shape[0], scores.shape[1] - 1, tgt, indptr, seen)
    first = torch.empty(scores.shape[0], dtype=torch.long, device=dev)
    ties = torch.empty_like(first)
    for b0 in range(0, scores.shape[0], user_batch_size):
        b1 = min(b0 + user_batch_size, scores.shape[0])
        rows, lo, hi = _block_rows(indptr, b0, b1)
        block = scores[b0:b1, 1:].clone()  # [B, N]
        own = torch.arange(b1 - b0, device=dev)
        t0, seen0 = tgt[b0:b1] - 1, seen[lo:hi] - 1
        s_target = block[own, t0].clone()
        block[rows, seen0] = float("-inf")
        block[own, t0] = float("-inf")
        above, level = _tally(block, s_target)
        first[b0:b1], ties[b0:b1] = _ranks(above.long(), level.long(), rows, seen0, t0)
    return TargetRanks(first, ties)


def rank_sampled(
    queries: Tensor, items: Tensor, targets: IndexLike, negatives: IndexLike,
    *, user_batch_size: int = 256,
) -> TargetRanks:  # fmt: skip
    r"""Where each target lands among itself and its own sampled negatives (the sampled protocol).

    ``first = 1 + |{n : s_{u n} > s_{u t_u}}|`` and ``ties = |{n : s_{u n} = s_{u t_u}}|`` over the
    negatives :math:`n` of user :math:`u`; the target and its negatives are scored in one batched
    product, so an identical embedding ties exactly.

    Shapes: ``queries [U, D]``, ``items [N + 1, D]``, ``targets [U]``, ``negatives [U, M]``.
    """
    dev = queries.device
    tgt = _as_index(targets, "targets", dev)
    neg = torch.as_tensor(negatives, device=dev).long()
    if neg.dim() != 2 or neg.shape[0] != queries.shape[0]:
        raise ValueError(
            f"negatives: expected [U, M] with U = {queries.shape[0]}, got {tuple(neg.shape)}"
        )
    nothing = torch.zeros(len(tgt) + 1, dtype=torch.long, device=dev)  # no excluded items here
    _validate(queries, items, tgt, nothing, nothing[:0])
    bad = (neg < 1) | (neg > items.shape[0] - 1)
    if bool(bad.any()):
        u, m = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"negatives[{u}, {m}] = {int(neg[u, m])}: expected an item id in 1..{items.shape[0] - 1}"
        )
    first = torch.empty(len(tgt), dtype=torch.long, device=dev)
    ties = torch.empty_like(first)
    for b0 in range(0, len(tgt), user_batch_size):
        b1 = min(b0 + user_batch_size, len(tgt))
        ids = torch.cat([tgt[b0:b1, None], neg[b0:b1]], dim=1)  # [B, 1 + M]: the target first
        cand = items[ids].float()  # [B, 1 + M, D]
        scores = (cand @ queries[b0:b1].float()[:, :, None])[:, :, 0]  # [B, 1 + M]
        above, level = _tally(scores[:, 1:], scores[:, 0])
        first[b0:b1], ties[b0:b1] = above.long() + 1, level.long()
    return TargetRanks(first, ties)


def sampled_metrics(
    ranks: TargetRanks, split: str, n: int, ties: TieRule = "expected"
) -> dict[str, float]:
    """``{split}/sampled{n}/hit@{10,20}`` and ``.../ndcg@{10,20}`` (the paper's protocol: HR is
    Recall with one target)."""
    got = ranks.metrics(f"{split}/sampled{n}", ties=ties, ks=SAMPLED_KS)
    return {k.replace("/recall@", "/hit@"): v for k, v in got.items() if not k.endswith("/mrr")}


def view_metrics(
    ranks: dict[str, TargetRanks], split: str, ties: TieRule = "expected"
) -> dict[str, float]:
    """Ranking metrics of every item view (``/text``, ``/image`` suffixes) plus reliance and
    balance when both single views are present (docs/METHOD.md §7)."""
    out: dict[str, float] = {}
    for view in VIEWS:
        if view in ranks:
            out |= ranks[view].metrics(split, "" if view == "both" else view, ties)
    if "text" in ranks and "image" in ranks:
        out |= modality_diagnostics(out, split)
    return out


def evaluate_views(
    queries: Tensor,
    item_views: dict[str, Tensor],
    targets: IndexLike,
    seen_indptr: IndexLike,
    seen_items: IndexLike,
    split: str,
    *,
    ties: TieRule = "expected",
    user_batch_size: int = 256,
    item_chunk: int = 8192,
) -> dict[str, float]:
    """Ranking metrics per item view plus collapse diagnostics, in one process (docs/METHOD.md §7).

    The same sequence embeddings are scored against each view's item embeddings (inference-time
    modality dropout). Keys: ``{split}/recall@k``, ``{split}/ndcg@k``, ``{split}/mrr`` for the
    ``both`` view; the same with ``/text`` or ``/image`` appended for the single views present;
    ``{split}/reliance_text``, ``{split}/reliance_image``, ``{split}/modality_balance`` when both
    single views are present; ``{split}/anisotropy_{view}`` and ``{split}/erank_{view}`` for each
    single view present.

    Shapes: ``queries [U, D]``, each ``item_views[view] [N + 1, D]``; the rest as
    :func:`rank_targets`.
    """
    unknown = sorted(set(item_views) - set(VIEWS))
    if "both" not in item_views or unknown:
        raise ValueError(
            f"item_views: expected 'both' and optionally 'text'/'image', got {sorted(item_views)}"
        )
    ranks = {
        view: rank_targets(
            queries,
            vectors,
            targets,
            seen_indptr,
            seen_items,
            user_batch_size=user_batch_size,
            item_chunk=item_chunk,
        )
        for view, vectors in item_views.items()
    }
    singles = {v: e for v, e in item_views.items() if v != "both"}
    return view_metrics(ranks, split, ties) | embedding_diagnostics(singles, split)
