r"""The two counts of full ranking over one CPU score tile, in one pass (a numba kernel).

A tile ``scores [n, ld]`` (float32, C-contiguous, ``ld >= w + n``) holds ``n`` users' scores of
``w`` items in its first ``w`` columns and user ``i``'s target score :math:`s_i` at
``scores[i, w + i]`` (:mod:`vlm2rec.ranking` appends the target rows to the item chunk so that
both come out of one GEMM, and pads the tile's width to a multiple of 4); later columns are
ignored. :func:`count_tile` writes

.. math::

    \mathrm{acc}_i = |\{j < w : S_{ij} > s_i\}|, \qquad
    \mathrm{acc}_{n+i} = |\{j < w : S_{ij} = s_i\}|

into ``acc [2n]`` (int32), after setting the excluded pairs (flat positions in the tile) to
:math:`-\infty`, which is never above or equal to a finite target. Torch needs an index fill and
three passes over the tile for the same counts (``==`` and ``>`` into float flags, then a row
sum), each a call of a few microseconds; this is one call that reads every score once, while the
tile is still in cache, and the compiler vectorises the compare-and-add loop.

Importing this module imports numba, and the first call compiles the kernel (numba caches it on
disk for later processes): 0.5-0.7 s of CPU and 118 MB resident once per process, measured by
``bench/eval.py``. That is why :mod:`vlm2rec.ranking` imports it only for problems large enough
to repay it.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _count(scores: np.ndarray, w: int, excluded: np.ndarray, acc: np.ndarray) -> None:
    n, ld = scores.shape
    for p in excluded:
        scores[p // ld, p % ld] = -np.inf
    for i in range(n):
        target = scores[i, w + i]
        above = np.int32(0)  # int32 accumulators: int64 ones halve the vector width (2.7x slower)
        equal = np.int32(0)
        for j in range(w):
            s = scores[i, j]
            above += np.int32(s > target)
            equal += np.int32(s == target)
        acc[i] = above
        acc[n + i] = equal


def count_tile(scores: np.ndarray, w: int, excluded: np.ndarray, acc: np.ndarray) -> None:
    """Set ``excluded`` (int64 flat positions in ``scores``) to -inf, then write the ``(above,
    equal)`` counts of the ``[n, >= w + n]`` float32 tile into ``acc [2n]`` int32."""
    n = scores.shape[0]
    if scores.shape[1] < w + n or acc.shape[0] < 2 * n or not scores.flags.c_contiguous:
        raise ValueError(f"a C-contiguous [{n}, >= {w + n}] tile and acc of {2 * n} expected")
    _count(scores, w, excluded, acc)
