r"""Leave-one-out splits of user sequences into training prefixes, validation and test examples.

For a user's time-ordered sequence :math:`s_1, \dots, s_n` (:math:`n \ge 3`) and history length
:math:`L`, with :math:`h_L(t) = (s_{\max(1, t-L)}, \dots, s_{t-1})` the last :math:`L` items before
position :math:`t`:

.. math::

    \text{test} = (h_L(n), s_n), \quad \text{val} = (h_L(n-1), s_{n-1}), \quad
    \text{train} = \{(h_L(t), s_t) : t = 2, \dots, n-2\}

Histories are stored newest LAST and left-padded with item id 0. The items an evaluation may drop
from a user's candidate list (``eval.exclude_seen = "all"``) are the distinct items seen before the
target, :math:`S(t) = \{s_1, \dots, s_{t-1}\}`: a function of the history alone, never of the
answer (docs/METHOD.md §1). Sparing the target from that set would leak it: every history item left
among the candidates would then *be* the target. A target that repeats an earlier item is therefore
not a candidate (a miss); :attr:`EvalExamples.repeats` says which, so the cost of the rule is
reported (``{split}/repeat_rate``).

============  =====================  ==================================================
symbol        argument / field       meaning
============  =====================  ==================================================
:math:`s_t`   ``items`` (flat)        item id at position ``t`` of a user's sequence
:math:`L`     ``history_length``      items kept per history
:math:`n`     sequence length         users with :math:`n <` ``min_length`` are dropped
============  =====================  ==================================================

Shapes: ``n`` training examples, ``U`` users, ``L`` history length; histories ``[n, L]`` or
``[U, L]``; ``seen_indptr`` ``[U + 1]`` is a CSR index into ``seen_items``.

Everything is vectorised over the flat, user-sorted interaction arrays (no per-user Python loop on
the hot path), because Amazon categories hold millions of interactions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

__all__ = ["EvalExamples", "Splits", "TrainExamples", "make_splits", "user_sequences"]


@dataclasses.dataclass(frozen=True, eq=False)
class TrainExamples:
    """Every training prefix of every user: ``(history, target)`` pairs."""

    user_ids: np.ndarray  #: [n] int64
    histories: np.ndarray  #: [n, L] int64, newest last, left-padded with 0
    targets: np.ndarray  #: [n] int64

    def __len__(self) -> int:
        return len(self.targets)


@dataclasses.dataclass(frozen=True, eq=False)
class EvalExamples:
    """One held-out ``(history, target)`` per user plus the items to exclude from its candidates."""

    user_ids: np.ndarray  #: [U] int64
    histories: np.ndarray  #: [U, L] int64, newest last, left-padded with 0
    targets: np.ndarray  #: [U] int64
    seen_indptr: np.ndarray  #: [U + 1] int64, CSR row pointers into seen_items
    seen_items: np.ndarray  #: [nnz] distinct items seen before the target, sorted per user

    def __len__(self) -> int:
        return len(self.targets)

    def seen(self, row: int) -> np.ndarray:
        """The distinct items example ``row``'s user met before its target."""
        return self.seen_items[self.seen_indptr[row] : self.seen_indptr[row + 1]]

    @property
    def repeats(self) -> np.ndarray:
        """``[U]`` bool: the target repeats an item seen before it (a miss under ``"all"``)."""
        counts = np.diff(self.seen_indptr)
        rows = np.repeat(np.arange(len(self), dtype=np.int64), counts)
        out = np.zeros(len(self), dtype=bool)
        out[rows[self.seen_items == self.targets[rows]]] = True
        return out

    def excluded(self, rule: str) -> tuple[np.ndarray, np.ndarray]:
        """CSR ``(indptr [U + 1], items)`` of the items removed from each user's candidates:
        ``"all"`` = every item seen before the target, ``"none"`` = nothing (``eval.exclude_seen``)."""
        if rule == "all":
            return self.seen_indptr, self.seen_items
        if rule == "none":
            return np.zeros(len(self) + 1, dtype=np.int64), self.seen_items[:0]
        raise ValueError(f"eval.exclude_seen: expected 'all' or 'none', got {rule!r}")

    def sample_negatives(self, n: int, n_items: int, rule: str, seed: int) -> np.ndarray:
        """``[U, n]`` item ids: ``n`` distinct negatives per example for the sampled protocol,
        uniform among the items that are neither its target nor excluded under ``rule``.

        Each user's draw is seeded by ``(seed, user id)`` alone, so the negatives are the same in
        every trial and rerun of the same data, and a subsample keeps its users' negatives.
        """
        out = np.zeros((len(self), n), dtype=np.int64)
        indptr, excluded = self.excluded(rule)
        for row in range(len(self)):
            banned = np.append(excluded[indptr[row] : indptr[row + 1]], self.targets[row])
            free = n_items - len(np.unique(banned))
            if free < n:
                raise ValueError(
                    f"eval.sampled_negatives = {n}: user {int(self.user_ids[row])} has only {free} "
                    f"items that are neither its target nor excluded (catalogue of {n_items})"
                )
            rng = np.random.default_rng(np.random.SeedSequence([seed, int(self.user_ids[row])]))
            picked: np.ndarray = np.zeros(0, dtype=np.int64)
            while len(picked) < n:  # rejection: draw distinct ids, drop the banned, top up
                draw = 1 + rng.choice(
                    n_items, size=min(n_items, 2 * n + len(banned)), replace=False
                )
                fresh = draw[~np.isin(draw, banned) & ~np.isin(draw, picked)]
                picked = np.concatenate([picked, fresh])[:n]
            out[row] = picked
        return out

    def subsample(self, n: int, seed: int) -> EvalExamples:
        """A seeded subset of ``n`` users in their original order (``n <= 0`` or ``n >= U``: self;
        0 is the config's "all users")."""
        if n <= 0 or n >= len(self):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        counts = np.diff(self.seen_indptr)[rows]
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # Gather each chosen row's CSR segment: start offset of its row + position inside it.
        within = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], counts)
        seen = self.seen_items[np.repeat(self.seen_indptr[rows], counts) + within]
        return EvalExamples(
            self.user_ids[rows], self.histories[rows], self.targets[rows], indptr, seen
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Leave-one-out splits of one dataset."""

    train: TrainExamples
    val: EvalExamples
    test: EvalExamples


def _flat_sequences(
    interactions: pa.Table, min_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user_ids [U], indptr [U + 1], items [sum n])`` of the users with >= ``min_length`` items."""
    if min_length < 3:
        raise ValueError(f"min_length must be >= 3 for leave-one-out, got {min_length}")
    for name in ("user_id", "item_id", "timestamp"):
        if name not in interactions.column_names:
            raise ValueError(f"interactions table: missing column {name!r}")
    users = interactions.column("user_id").to_numpy().astype(np.int64, copy=False)
    items = interactions.column("item_id").to_numpy().astype(np.int64, copy=False)
    times = interactions.column("timestamp").to_numpy().astype(np.int64, copy=False)
    du = np.diff(users)
    if not (
        (du > 0) | ((du == 0) & (np.diff(times) >= 0))
    ).all():  # prepared data is sorted already
        # lexsort is stable, so equal timestamps keep the file's order (the order they were written).
        order = np.lexsort((times, users))
        users, items = users[order], items[order]
        du = np.diff(users)
    if not len(users):
        return users, np.zeros(1, dtype=np.int64), items
    bounds = np.concatenate([[0], np.flatnonzero(du) + 1, [len(users)]])
    uniq, counts = users[bounds[:-1]], np.diff(bounds)
    keep = counts >= min_length
    kept_rows = np.repeat(keep, counts)
    indptr = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
    return uniq[keep], indptr, items[kept_rows]


def user_sequences(interactions: pa.Table, min_length: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(user ids, each user's item ids in time order); users shorter than ``min_length`` dropped."""
    user_ids, indptr, items = _flat_sequences(interactions, min_length)
    return user_ids, np.split(items, indptr[1:-1])


def _histories(
    items: np.ndarray, positions: np.ndarray, starts: np.ndarray, length: int
) -> np.ndarray:
    """``[len(positions), L]`` histories: the ``L`` items before each flat position, within its user."""
    out = np.zeros((len(positions), length), dtype=np.int64)
    for j in range(length):  # column by column: no [n, L] index temporaries on Amazon-sized data
        src = positions - (length - j)  # column L-1 holds the newest item, position - 1
        valid = src >= starts  # items before the user's first one stay padding
        out[valid, j] = items[src[valid]]
    return out


def _seen_csr(
    items: np.ndarray, starts: np.ndarray, targets_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the distinct items in ``items[starts[u]:targets_pos[u]]`` (the target's own id is
    not looked at: the mask must not depend on the answer)."""
    counts = targets_pos - starts
    rows = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    pos = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    seen = items[np.repeat(starts, counts) + pos]
    # One sort over (row, item) keys both groups by user and de-duplicates within a user
    # (sort + neighbour compare: numpy 2's hash-based np.unique is several times slower here).
    key = np.sort(rows * (int(items.max()) + 1) + seen)
    key = key[np.concatenate([[True], key[1:] != key[:-1]])] if len(key) else key
    key_rows, key_items = np.divmod(key, int(items.max()) + 1)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(key_rows, minlength=len(starts)))])
    return indptr.astype(np.int64), key_items.astype(np.int64)


def _eval_examples(
    user_ids: np.ndarray,
    items: np.ndarray,
    starts: np.ndarray,
    targets_pos: np.ndarray,
    length: int,
) -> EvalExamples:
    indptr, seen = _seen_csr(items, starts, targets_pos)
    hist = _histories(items, targets_pos, starts, length)
    return EvalExamples(user_ids.copy(), hist, items[targets_pos].copy(), indptr, seen)


def make_splits(interactions: pa.Table, history_length: int, min_length: int) -> Splits:
    """Leave-one-out split of an interactions table (see the module docstring)."""
    if history_length < 1:
        raise ValueError(f"history_length must be >= 1, got {history_length}")
    user_ids, indptr, items = _flat_sequences(interactions, min_length)
    if not len(user_ids):
        raise ValueError(f"interactions table: no user has >= {min_length} interactions")
    starts, ends = indptr[:-1], indptr[1:]
    counts = ends - starts
    # Training targets are 0-based positions 1 .. n-3 of each user (t = 2 .. n-2, 1-based).
    n_train = counts - 3
    train_user = np.repeat(np.arange(len(starts), dtype=np.int64), n_train)
    local = np.arange(n_train.sum(), dtype=np.int64) - np.repeat(
        np.cumsum(n_train) - n_train, n_train
    )
    train_pos = starts[train_user] + 1 + local
    train = TrainExamples(
        user_ids=user_ids[train_user],
        histories=_histories(items, train_pos, starts[train_user], history_length),
        targets=items[train_pos].copy(),
    )
    val = _eval_examples(user_ids, items, starts, ends - 2, history_length)
    test = _eval_examples(user_ids, items, starts, ends - 1, history_length)
    return Splits(train=train, val=val, test=test)
