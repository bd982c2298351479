"""The study's own console lines: which trial is where, the best so far, and the time left.

One :class:`StudyProgress` per study driver numbers the trials in the order they first report
(``trial k/n``), and turns each report into one line (here wrapped)::

    trial 3/9 search-633f2a38  epoch 4/10 | val/ndcg@10 0.4120  train/loss 2.1033
      | best 0.4500 (trial 1 reference) | 2m10s, ~6m40s left

The time left is the epochs still to train times the seconds a trial has taken per epoch so far
(its Tune ``time_total_s``, start-up included, over its epochs: summed over the trials), shared by
the trials that run at once. A running trial is expected to train as many epochs as the finished
searched trials did on average (ASHA stops most of them early), or all of them once it has passed
that; a trial still to come, that average (all epochs until a searched trial has finished).
Ray-free; the driver's Tune callback (``study/callbacks.py``) feeds it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import TextIO

from study.records import TrialRecord, best_epoch_index, finite, trial_label
from vlm2rec.selection import is_better

__all__ = ["StudyProgress", "duration"]


def duration(seconds: float) -> str:
    """``42s``, ``6m40s`` or ``2h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclasses.dataclass
class _Trial:
    number: int  #: k of "trial k/n"
    label: str  #: trial_label()
    epochs: int = 0  #: epochs reported so far
    seconds: float | None = None  #: the trial's running time at its last report
    finished: bool = False


class StudyProgress:
    """Numbers trials, keeps the best value so far and estimates the time left (module docstring).

    ``total`` trials (the reference included) of at most ``epochs`` epochs each, ``concurrent`` at
    a time; ``metric`` and ``mode`` are the study's. Lines go to ``stream``.
    """

    def __init__(
        self,
        *,
        total: int,
        epochs: int,
        metric: str,
        mode: str,
        concurrent: int = 1,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.epochs, self.metric, self.mode = total, epochs, metric, mode
        self.concurrent = max(1, concurrent)
        self.stream = stream if stream is not None else sys.stdout
        self._clock = clock
        self._started = clock()
        self._trials: dict[str, _Trial] = {}
        self._best: tuple[float, str] | None = None  #: (value, "trial k label")

    # ---- state ------------------------------------------------------------------------------
    def resume(self, records: Iterable[TrialRecord]) -> None:
        """Know the trials a previous driver ran (in the order given): their numbers, epochs,
        whether they finished, and their best values."""
        for record in records:
            trial = self._trial(record.trial_id, trial_label(record.kind, record.trial_id))
            trial.epochs = len(record.history)
            trial.seconds = record.wall_s
            trial.finished = record.status != "completed" or any(
                k.startswith("test/") for k in (record.history[-1] if record.history else {})
            )
            i = best_epoch_index(record.history, self.metric, self.mode)
            if i is not None:
                self._offer(record.history[i][self.metric], trial)

    def _trial(self, trial_id: str, label: str) -> _Trial:
        if trial_id not in self._trials:
            self._trials[trial_id] = _Trial(len(self._trials) + 1, label)
        return self._trials[trial_id]

    def _offer(self, value: float, trial: _Trial) -> None:
        if finite(value) and is_better(
            value, None if self._best is None else self._best[0], self.mode
        ):
            self._best = (value, f"trial {trial.number} {trial.label}")

    # ---- lines ------------------------------------------------------------------------------
    def epoch(
        self,
        trial_id: str,
        label: str,
        epoch: int,
        metrics: dict[str, float],
        seconds: float | None = None,
    ) -> str:
        """The line of one report (``metrics``: the reported values; ``seconds``: the trial's
        running time so far), printed and returned."""
        trial = self._trial(trial_id, label)
        trial.epochs = max(trial.epochs, epoch)  # a resumed trial re-reports its checkpoint's
        trial.seconds = seconds if seconds else trial.seconds
        value = metrics.get(self.metric, math.nan)
        self._offer(value, trial)
        loss = metrics.get("train/loss", math.nan)
        parts = [
            f"{self._name(trial)}  epoch {epoch}/{self.epochs}",
            f"{self.metric} {value:.4f}  train/loss {loss:.4f}",
        ]
        if self._best is not None:
            parts.append(f"best {self._best[0]:.4f} ({self._best[1]})")
        parts.append(self._clock_text())
        return self._print(" | ".join(parts))

    def finished(self, trial_id: str, label: str, text: str) -> str:
        """The line of a trial's end (``text``: how it ended), printed and returned."""
        trial = self._trial(trial_id, label)
        trial.finished = True
        return self._print(f"{self._name(trial)}  {text} | {self._clock_text()}")

    def elapsed(self) -> float:
        """Seconds since this driver started."""
        return self._clock() - self._started

    def left(self) -> float | None:
        """Estimated seconds to the study's end (module docstring); None before a trial has
        reported its running time."""
        timed = [t for t in self._trials.values() if t.seconds and t.epochs]
        if not timed:
            return None
        per_epoch = sum(t.seconds or 0.0 for t in timed) / sum(t.epochs for t in timed)
        searched = [
            t.epochs for t in self._trials.values() if t.finished and t.label != "reference"
        ]
        expected = sum(searched) / len(searched) if searched else self.epochs
        running = [t for t in self._trials.values() if not t.finished]
        to_come = max(self.total - len(self._trials), 0)
        epochs = to_come * expected + sum(
            (expected if t.epochs < expected else self.epochs) - t.epochs for t in running
        )
        slots = min(self.concurrent, len(running) + to_come) or 1
        return max(epochs, 0.0) * per_epoch / slots

    def _name(self, trial: _Trial) -> str:
        return f"trial {trial.number}/{max(self.total, len(self._trials))} {trial.label}"

    def _clock_text(self) -> str:
        left = self.left()
        return f"{duration(self.elapsed())}" + ("" if left is None else f", ~{duration(left)} left")

    def _print(self, line: str) -> str:
        print(line, file=self.stream, flush=True)
        return line
