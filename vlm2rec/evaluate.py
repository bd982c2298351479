r"""Full-ranking evaluation: every catalogue item is a candidate (METHOD.md §1, §7).

For user :math:`u` with sequence embedding :math:`q_u`, held-out target :math:`t_u` and history
:math:`H_u` (items seen before the target), the score of item :math:`j` is :math:`s_{uj} = q_u^\top
v_j` and the target's rank is

.. math::

    r_u = 1 + \bigl|\{\, j \in C_u : j \ne t_u,\ s_{uj} \ge s_{ut_u} \,\}\bigr|,
    \qquad C_u = \{1, \dots, N\} \setminus (H_u \setminus \{t_u\})

- **Mask rule**: candidates are all items ``1..N`` (row 0 of the item matrix is padding and never a
  candidate) minus the user's seen items; the target itself is never masked, even when it also
  appears among the seen items (a repeat purchase stays rankable).
- **Tie rule (pessimistic)**: every other candidate whose score *equals* the target's counts as
  ranked ahead of it, so constant scores give the worst rank :math:`|C_u|` and can never look good
  (METHOD.md §9: optimistic ties made a collapsed text view look strong).
- **Exact ties need one GEMM**: a BLAS result depends on the call's shape (measured here: a row-wise
  dot product disagrees with the matrix product in the last bit for most users), so two items with
  identical embeddings could land on either side of the target. Each score block is therefore
  computed as one product of the user block with ``[item chunk; target rows]``, and the target's
  score is read from that same call.

Scores are computed in float32 whatever the input dtype (bf16 scores would manufacture ties), in
blocks of ``user_batch_size x item_chunk``: memory is :math:`O(B \cdot C)`, never users x items, and
no top-k is needed, only a count per block.

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
``seen_items [nnz]`` (CSR; item ids in ``1..N``); result ``[U]`` int64 on the queries' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlm2rec.diagnostics import embedding_diagnostics, modality_diagnostics
from vlm2rec.metrics import ranking_metrics

__all__ = ["VIEWS", "evaluate_views", "rank_targets"]

VIEWS: tuple[str, ...] = ("both", "text", "image")  #: item views; single views get a key suffix

IndexLike = Tensor | np.ndarray[Any, Any] | Sequence[int]  #: index arrays: tensor, numpy or list


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
    n_items, n_users = items.shape[0] - 1, queries.shape[0]
    if n_items < 1:
        raise ValueError("items: expected row 0 (padding) plus at least one item, got 0 items")
    for name, emb in (("queries", queries), ("items", items[1:])):
        if not emb.dtype.is_floating_point or not bool(torch.isfinite(emb).all()):
            raise ValueError(f"{name}: expected finite floating-point embeddings")
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


def _count_block(
    queries: Tensor, cand: Tensor, targets0: Tensor, rows: Tensor, seen0: Tensor, item_chunk: int
) -> Tensor:
    """Ranks of one user block; ``targets0``/``seen0`` are 0-based candidate indices."""
    q = queries.float()  # [B, D]
    n_users = q.shape[0]
    target_rows = cand[targets0].float()  # [B, D]
    own = torch.arange(n_users, device=q.device)
    ahead = torch.zeros(n_users, dtype=torch.long, device=q.device)
    for start in range(0, cand.shape[0], item_chunk):
        chunk = cand[start : start + item_chunk].float()  # [C, D]
        width = chunk.shape[0]
        # one GEMM for chunk and targets, so equal embeddings give bit-equal scores
        scores = q @ torch.cat([chunk, target_rows]).T  # [B, C + B]
        s_target = scores[:, width:].diagonal().clone()  # [B]
        _mask_(scores, rows, seen0, start, width)
        _mask_(scores, own, targets0, start, width)  # j != t: the target is not ahead of itself
        # int32 partial sums (a chunk holds < 2**31 items) skip a bool -> int64 copy
        ahead += (scores[:, :width] >= s_target[:, None]).sum(dim=1, dtype=torch.int32)
    return ahead + 1


def rank_targets(
    queries: Tensor,
    items: Tensor,
    targets: IndexLike,
    seen_indptr: IndexLike,
    seen_items: IndexLike,
    *,
    user_batch_size: int = 256,
    item_chunk: int = 8192,
) -> Tensor:
    r"""1-based full-ranking rank of each user's target (module docstring: mask and tie rules).

    :math:`r_u = 1 + |\{j \in C_u, j \ne t_u : s_{uj} \ge s_{ut_u}\}|`, so a constant score gives
    :math:`r_u = |C_u|`.

    Shapes: ``queries [U, D]``, ``items [N + 1, D]`` (row 0 padding), ``targets [U]``,
    ``seen_indptr [U + 1]``, ``seen_items [nnz]``; returns ``[U]`` int64 on ``queries.device``.
    Index arrays may be tensors (any device), numpy arrays or lists.
    """
    if user_batch_size < 1 or item_chunk < 1:
        raise ValueError(f"user_batch_size={user_batch_size}, item_chunk={item_chunk}: need >= 1")
    dev = queries.device
    tgt = _as_index(targets, "targets", dev)
    indptr = _as_index(seen_indptr, "seen_indptr", dev)
    seen = _as_index(seen_items, "seen_items", dev)
    _validate(queries, items, tgt, indptr, seen)
    cand = items[1:]  # [N, D]: candidate index j is item id j + 1
    ranks = torch.empty(queries.shape[0], dtype=torch.long, device=dev)
    for b0 in range(0, queries.shape[0], user_batch_size):
        b1 = min(b0 + user_batch_size, queries.shape[0])
        lo, hi = int(indptr[b0]), int(indptr[b1])
        counts = indptr[b0 + 1 : b1 + 1] - indptr[b0:b1]  # [B] seen items per user
        rows = torch.repeat_interleave(
            torch.arange(b1 - b0, device=dev), counts, output_size=hi - lo
        )  # [nnz_block]: block-local row of each seen entry
        ranks[b0:b1] = _count_block(
            queries[b0:b1], cand, tgt[b0:b1] - 1, rows, seen[lo:hi] - 1, item_chunk
        )
    return ranks


def evaluate_views(
    queries: Tensor,
    item_views: dict[str, Tensor],
    targets: IndexLike,
    seen_indptr: IndexLike,
    seen_items: IndexLike,
    split: str,
    *,
    user_batch_size: int = 256,
    item_chunk: int = 8192,
) -> dict[str, float]:
    """Ranking metrics per item view plus collapse diagnostics (METHOD.md §7, DESIGN.md rule 2).

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
    out: dict[str, float] = {}
    for view in VIEWS:
        if view in item_views:
            ranks = rank_targets(
                queries,
                item_views[view],
                targets,
                seen_indptr,
                seen_items,
                user_batch_size=user_batch_size,
                item_chunk=item_chunk,
            )
            out |= ranking_metrics(ranks.cpu(), split, suffix="" if view == "both" else view)
    if "text" in item_views and "image" in item_views:
        out |= modality_diagnostics(out, split)
    singles = {v: e for v, e in item_views.items() if v != "both"}
    return out | embedding_diagnostics(singles, split)
