r"""k-core filtering of a user–item interaction multigraph, and the minimum-length user filter.

Pure functions: integer/str id arrays in, a boolean keep-mask over the interactions out.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["kcore_mask", "min_length_mask"]


def _codes(ids: npt.ArrayLike) -> tuple[np.ndarray, int]:
    """Dense codes 0..K-1 for arbitrary hashable-sortable ids, and K."""
    uniques, inverse = np.unique(np.asarray(ids), return_inverse=True)
    return inverse.reshape(-1), len(uniques)


def kcore_mask(users: npt.ArrayLike, items: npt.ArrayLike, k: int) -> np.ndarray:
    r"""Which interactions belong to the :math:`k`-core of the user–item graph.

    The interactions :math:`E` are the edges of a bipartite multigraph (an edge per interaction, so a
    user who bought an item twice at different times has degree 2 from it). The :math:`k`-core is the
    largest :math:`E' \subseteq E` in which every user and every item that still occurs has

    .. math:: \deg_{E'}(u) \ge k, \qquad \deg_{E'}(i) \ge k .

    It is unique, so it is reached by deleting, round after round, every edge of every node whose
    degree is below :math:`k` until nothing changes (a fixed point: one pass is not enough, because
    deleting a user can push an item below :math:`k` and vice versa).

    ============  =========
    symbol        argument
    ============  =========
    :math:`u_e`   ``users[e]``
    :math:`i_e`   ``items[e]``
    :math:`k`     ``k`` (``k <= 1`` keeps everything: every node of :math:`E` has degree >= 1)
    ============  =========

    Shapes:
        users, items: ``[E]`` (any sortable dtype: ints or strings); returns ``bool [E]``.
    """
    users_arr, items_arr = np.asarray(users), np.asarray(items)
    if users_arr.shape != items_arr.shape or users_arr.ndim != 1:
        raise ValueError(
            f"kcore_mask: users and items must be 1-D of equal length, got {users_arr.shape} and "
            f"{items_arr.shape}"
        )
    keep = np.ones(len(users_arr), dtype=bool)
    if k <= 1 or len(users_arr) == 0:
        return keep
    user_codes, n_users = _codes(users_arr)
    item_codes, n_items = _codes(items_arr)
    kept = len(users_arr)
    while True:
        user_deg = np.bincount(user_codes[keep], minlength=n_users)
        item_deg = np.bincount(item_codes[keep], minlength=n_items)
        keep &= (user_deg[user_codes] >= k) & (item_deg[item_codes] >= k)
        now = int(keep.sum())
        if now == kept:  # fixed point: no node fell below k in this round
            return keep
        kept = now


def min_length_mask(users: npt.ArrayLike, min_length: int) -> np.ndarray:
    r"""Keep the interactions of users with at least ``min_length`` of them: :math:`n_u \ge m`.

    Shapes:
        users: ``[E]``; returns ``bool [E]``.
    """
    users_arr = np.asarray(users)
    if len(users_arr) == 0:
        return np.ones(0, dtype=bool)
    codes, n_users = _codes(users_arr)
    lengths = np.bincount(codes, minlength=n_users)
    return lengths[codes] >= min_length
