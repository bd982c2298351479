"""Model selection: whether one value of a metric beats another under ``max`` or ``min``.

One definition serves the training loop (the best epoch of a run, ``train.fit``) and the study
(the best epoch of a trial, ``study.records``), so the checkpoint a run tests and the epoch its
leaderboard row shows can never disagree.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Mode", "is_better"]

Mode = Literal["max", "min"]


def is_better(value: float, best: float | None, mode: str) -> bool:
    """True when ``value`` beats ``best`` (``None``: nothing to beat yet) under ``mode``.

    A tie is not better, so of equal values the earliest stays the best.
    """
    return best is None or (value > best if mode == "max" else value < best)
