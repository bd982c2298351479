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
  score is read from that same call (not gathered once per user: that would be another call).
  Even one call is not enough on an AVX2-only CPU (an AMD EPYC, torch 2.13's MKL): it puts
  identical columns a last bit apart when the product is not a multiple of 4 columns wide
  (measured: widths 5-7 and 9-11 at 17 and 64 users, every such width below 32 at 3 users, none
  at a multiple of 4). Each tile's product is therefore padded to a multiple of 4 columns
  (:func:`_padded`); the padding columns are computed and never read.

Scores are computed in float32 whatever the input dtype (bf16 scores would manufacture ties), one
tile of ``b`` users x ``c`` items per GEMM (at most ``user_batch_size x item_chunk``; on CPU at most
:data:`CPU_TILE`, so that the tile is still in cache when it is counted): memory is
:math:`O(b \cdot c)` for the scores, never users x items, plus the per-user inputs, and no top-k
is needed, only two counts per tile. The counts never materialise a users x items mask: the
excluded pairs are written as :math:`-\infty` into the few tiles that hold them.

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

import itertools
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


def _finite(x: Tensor) -> bool:
    """Every entry finite, checked in one pass without a temporary the size of ``x``.

    ``aminmax`` propagates NaN, and an infinity is the minimum or the maximum; ``isfinite(x).all()``
    would allocate an ``x``-sized mask (and more), the whole peak memory of a large catalogue.
    """
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


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
        if not emb.dtype.is_floating_point or not _finite(emb):
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


CPU_TILE: tuple[int, int] = (64, 2048)
"""Most users x items per GEMM call on CPU. The score tile, the equality flags below it and the
item rows (about 1.6 MB in float32 for D = 64) then fit a core's L2 cache while they are compared
and counted; with the default 256 x 8192 blocks each comparison read 8 MB from memory.
``bench/eval.py --cpu-tile`` measures other tiles."""


PASS_USERS = 2048
"""Users whose excluded pairs are indexed together (``O(PASS_USERS x history)`` memory, whatever the
number of users); the catalogue is read once per pass, so copying each chunk costs little."""

FUSED_MIN_PAIRS = 10**9
"""Scored (user, item) pairs from which a CPU ranking counts with the one-pass numba kernel
(:mod:`vlm2rec.tile_count`) instead of torch's passes. The kernel saves about 0.4 ns per pair
(``bench/eval.py``, 1M items x 10k users: 1.56x the GEMM's 9.8 s before, 1.14x with it), so a call
of this size saves most of the kernel's one-off load (0.5-0.7 s of CPU per process) and every
later call in the process (validation each epoch) saves it all. Smaller problems, such as a
default study's validation, never import numba."""


def counts_with_kernel(device: torch.device, pairs: int) -> bool:
    """Whether :func:`rank_targets` counts ``pairs`` scored (user, item) pairs on ``device`` with
    the numba kernel (CPU, at least :data:`FUSED_MIN_PAIRS`)."""
    return device.type == "cpu" and pairs >= FUSED_MIN_PAIRS


_EXACT_COUNT = 2**24 - 1  #: float32 holds every integer count up to here exactly


def score_tile(device: torch.device, user_batch_size: int, item_chunk: int) -> tuple[int, int]:
    """``(users, items)`` scored per GEMM call: the given block, capped at :data:`CPU_TILE` on CPU.

    The counts are exact for any tile (the tests rank with many). Like the block sizes before, the
    tile is a call shape, so it could move the GEMM's last bit and flip a near-tie; on MKL the
    ranks of a 100k-item float problem came out identical for every tile tried.
    """
    users, items = user_batch_size, min(item_chunk, _EXACT_COUNT)
    if device.type == "cpu":
        return min(users, CPU_TILE[0]), min(items, CPU_TILE[1])
    return users, items


def _padded(width: int) -> int:
    """``width`` rounded up to a multiple of 4: the score tile's row stride (module docstring)."""
    return (width + 3) & -4


class _Tiles:
    r"""The buffers one :func:`rank_targets` call reuses for every ``[b users] x [c items]`` tile.

    - ``rows [_padded(c + b), D]``: the item chunk followed by the block's target rows, so one
      GEMM scores both and a duplicate of a target ties with it bit for bit, then padding rows;
    - ``flags``: the score tile ``[n, ld]`` (``ld = _padded(w + n)`` columns, the last
      ``ld - w - n`` of them padding) followed by ``n`` more rows of the same stride, where the
      equality flags go; then ``flags`` as ``[2n, w]`` holds one ``(above, equal)`` flag pair per
      (user, candidate) and one row sum counts both.

    Views are cached per tile shape ``(w, n)``: at most four (full or last chunk, full or last
    block).
    """

    def __init__(self, users: int, items: int, dim: int, device: torch.device) -> None:
        ld = _padded(items + users)
        # zeros: the padding rows enter every GEMM; their columns are never read, but they hold
        # finite numbers rather than whatever the allocator left there
        self.rows = torch.zeros(ld, dim, device=device)
        self.flags = torch.empty(2 * users * ld, device=device)
        self._views: dict[tuple[int, int], tuple[Tensor, ...]] = {}
        self._numpy: dict[tuple[int, int], np.ndarray] = {}

    def views(self, w: int, n: int) -> tuple[Tensor, ...]:
        """``(rows_t [D, ld], targets [n, D], scores [n, ld], flat [n ld], s_target [n, 1],
        above [n, w], equal [n, w], both [2n, w])`` for a tile of ``n`` users x ``w`` items,
        ``ld = _padded(w + n)``."""
        got = self._views.get((w, n))
        if got is None:
            ld = _padded(w + n)  # row stride of the score tile
            both = self.flags.as_strided((2 * n, w), (ld, 1))  # score rows, then equality rows
            got = (
                self.rows[:ld].T,
                self.rows[w : w + n],
                self.flags[: n * ld].view(n, ld),
                self.flags[: n * ld],
                self.flags.as_strided((n, 1), (ld + 1, 0), w),  # diagonal of the target columns
                both[:n],
                both[n:],
                both,
            )
            self._views[w, n] = got
        return got

    def numpy_scores(self, w: int, n: int) -> np.ndarray:
        """The ``[n, ld]`` score tile of :meth:`views` as a numpy array (CPU: no copy)."""
        got = self._numpy.get((w, n))
        if got is None:
            got = self._numpy[w, n] = self.views(w, n)[2].numpy()
        return got


def _tile_positions(
    rows: Tensor, seen0: Tensor, targets0: Tensor, n_items: int, users: int, items: int
) -> tuple[Tensor, list[int]]:
    """Where each excluded (user, candidate) pair lies in its tile's score buffer.

    The pairs are each user's history and its own target (``j != t``: the target is not its own
    tie). Returns ``(positions [nnz + U] int64, sizes)``: positions sorted by tile (chunk-major,
    then user block), ``sizes[k * n_blocks + b]`` of them in tile ``(chunk k, block b)``; one host
    sync in all.
    """
    n_users = len(targets0)
    own = torch.arange(n_users, device=targets0.device)
    user, cand = torch.cat([rows, own]), torch.cat([seen0, targets0])  # [nnz + U]
    n_blocks = -(-n_users // users)
    key, order = torch.sort((cand // items).mul_(n_blocks).add_(user // users))  # tile, chunk-major
    user, cand = user[order], cand[order]
    del order  # in place from here on: these arrays are the pass's largest allocation
    chunk, block = key // n_blocks, key % n_blocks
    width = chunk.mul(-items).add_(n_items).clamp_(max=items)  # w of the tile
    height = block.mul(-users).add_(n_users).clamp_(max=users)  # n of the tile
    stride = width.add_(height).add_(3).bitwise_and_(-4)  # _padded(w + n), in place
    positions = user.sub_(block.mul_(users)).mul_(stride).add_(cand.sub_(chunk.mul_(items)))
    n_tiles = -(-n_items // items) * n_blocks
    return positions, torch.bincount(key, minlength=n_tiles).tolist()


def _score_tile(views: tuple[Tensor, ...], q: Tensor, target_rows: Tensor) -> None:
    r"""One GEMM :math:`S = q\,[V_c; V_t; P]^\top` ``[n, ld]`` into the tile's score buffer (``P``:
    the padding rows); the target scores are its diagonal in the columns after the items."""
    rows_t, targets, scores = views[:3]
    targets.copy_(target_rows)
    torch.mm(q, rows_t, out=scores)


def _count_tile(views: tuple[Tensor, ...], excluded: Tensor, acc: Tensor) -> None:
    r"""Write a scored tile's counts into float32 ``acc [2n]`` (above, then equal), with torch.

    Excluded pairs are set to :math:`-\infty`; then ``equal = (S == s_t)`` into the rows below,
    ``above = (S > s_t)`` in place, and one row sum counts both (float32 sums of 0/1 flags are
    exact up to :data:`_EXACT_COUNT`, more than a tile holds).
    """
    _, _, _, flat, s_target, above, equal, both = views
    if len(excluded):
        flat.index_fill_(0, excluded, float("-inf"))
    torch.eq(above, s_target, out=equal)
    torch.gt(above, s_target, out=above)  # scores -> flags; s_target lies outside, untouched
    torch.sum(both, dim=1, out=acc)


def _rank_pass(
    queries: Tensor,
    cand: Tensor,
    targets0: Tensor,
    rows: Tensor,
    seen0: Tensor,
    tile: tuple[int, int],
    fused: bool,
) -> TargetRanks:
    """Ranks of one pass of users over the whole catalogue, tile by tile; each chunk is copied
    once for all the pass's user blocks. ``rows``: the pass-local user of each ``seen0`` entry;
    ``fused``: count each tile with the one-pass numba kernel (CPU), else with torch."""
    users, items = tile
    n_users, n_items = len(targets0), cand.shape[0]
    excluded, sizes = _tile_positions(rows, seen0, targets0, n_items, users, items)
    blocks = [(b0, min(users, n_users - b0)) for b0 in range(0, n_users, users)]
    q = [queries[b0 : b0 + n].float() for b0, n in blocks]  # no copy for float32
    t_rows = cand[targets0].float()  # [U, D], gathered once: a block's rows are copied per chunk
    t_rows_b = [t_rows[b0 : b0 + n] for b0, n in blocks]
    tiles = _Tiles(users, items, cand.shape[1], queries.device)
    acc_dtype = torch.int32 if fused else torch.float32
    acc = torch.zeros(len(blocks), 2 * users, dtype=acc_dtype, device=queries.device)  # a chunk's
    acc_b = [acc[b, : 2 * n] for b, (_, n) in enumerate(blocks)]
    total = torch.zeros(len(blocks), 2 * users, dtype=torch.long, device=queries.device)
    if fused:
        from vlm2rec.tile_count import count_tile

        excluded_np, acc_np = excluded.numpy(), [a.numpy() for a in acc_b]
    ends = list(itertools.accumulate(sizes, initial=0))  # tile t's positions: ends[t]:ends[t + 1]
    for k, start in enumerate(range(0, n_items, items)):
        w = min(items, n_items - start)
        tiles.rows[:w].copy_(cand[start : start + w])  # float32 whatever the input dtype
        for b, (_, n) in enumerate(blocks):
            t, views = k * len(blocks) + b, tiles.views(w, n)
            _score_tile(views, q[b], t_rows_b[b])
            if fused:
                count_tile(
                    tiles.numpy_scores(w, n), w, excluded_np[ends[t] : ends[t + 1]], acc_np[b]
                )
            else:
                _count_tile(views, excluded[ends[t] : ends[t + 1]], acc_b[b])
        total += acc.long()  # each tile overwrote its slice: one chunk's counts, exact
    above = torch.cat([total[b, :n] for b, (_, n) in enumerate(blocks)])
    level = torch.cat([total[b, n : 2 * n] for b, (_, n) in enumerate(blocks)])
    return _ranks(above, level, rows, seen0, targets0)


def _tally(scores: Tensor, s_target: Tensor) -> tuple[Tensor, Tensor]:
    """``(strictly above, equal)`` counts per row of a masked ``[B, C]`` score block."""
    # int32 partial sums (a chunk holds < 2**31 items) skip a bool -> int64 copy
    above = (scores > s_target[:, None]).sum(dim=1, dtype=torch.int32)
    level = (scores == s_target[:, None]).sum(dim=1, dtype=torch.int32)
    return above, level


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

    Users go in passes of :data:`PASS_USERS` over the catalogue, each scored tile by tile
    (:func:`score_tile`); memory: the tile buffers (:class:`_Tiles`) plus ``O(PASS_USERS x
    history)`` indices, whatever ``N`` and ``U``.

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
    tile = score_tile(dev, user_batch_size, item_chunk)
    fused = counts_with_kernel(dev, len(tgt) * cand.shape[0])
    step = tile[0] * max(1, PASS_USERS // tile[0])  # whole tiles of users per pass
    parts = []
    for p0 in range(0, len(tgt), step):
        p1 = min(p0 + step, len(tgt))
        rows, lo, hi = _block_rows(indptr, p0, p1)
        parts.append(
            _rank_pass(queries[p0:p1], cand, tgt[p0:p1] - 1, rows, seen[lo:hi] - 1, tile, fused)
        )
    if not parts:
        return TargetRanks(tgt.new_zeros(0), tgt.new_zeros(0))
    return TargetRanks(*(torch.cat(ranks) for ranks in zip(*parts, strict=True)))


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
