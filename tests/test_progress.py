"""The study's console lines (study/progress.py): trial numbers, the best so far, the time left."""

from __future__ import annotations

import io

from study.progress import StudyProgress, duration
from study.records import TrialRecord

METRIC = "val/ndcg@10"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _progress(clock: Clock, total: int = 3, mode: str = "max") -> tuple[StudyProgress, io.StringIO]:
    out = io.StringIO()
    progress = StudyProgress(
        total=total, epochs=4, metric=METRIC, mode=mode, stream=out, clock=clock
    )
    return progress, out


def test_a_line_names_the_trial_its_epoch_value_best_and_times() -> None:
    clock = Clock()
    progress, out = _progress(clock)
    clock.now += 10
    line = progress.epoch("r1", "reference", 1, {METRIC: 0.25, "train/loss": 2.5})
    assert out.getvalue() == line + "\n"
    assert line.startswith("trial 1/3 reference  epoch 1/4 | val/ndcg@10 0.2500  train/loss 2.5000")
    assert "best 0.2500 (trial 1 reference)" in line
    # 1 epoch in 10 s; left: 3 epochs of this trial + 2 trials x 4 epochs = 11 epochs
    assert line.endswith("10s, ~1m50s left")


def test_trials_are_numbered_in_the_order_they_first_report_and_the_best_is_kept() -> None:
    clock = Clock()
    progress, _ = _progress(clock)
    progress.epoch("r1", "reference", 1, {METRIC: 0.25})
    line = progress.epoch("s1", "search-s1", 1, {METRIC: 0.30})
    assert line.startswith("trial 2/3 search-s1")
    assert "best 0.3000 (trial 2 search-s1)" in line
    line = progress.epoch("r1", "reference", 2, {METRIC: 0.28})
    assert line.startswith("trial 1/3 reference  epoch 2/4")
    assert "best 0.3000 (trial 2 search-s1)" in line  # 0.28 < 0.30: still trial 2


def test_min_mode_keeps_the_lowest() -> None:
    progress, _ = _progress(Clock(), mode="min")
    progress.epoch("a", "search-a", 1, {METRIC: 0.5})
    assert "best 0.2000 (trial 2 search-b)" in progress.epoch("b", "search-b", 1, {METRIC: 0.2})


def test_a_trial_that_ends_early_no_longer_counts_in_the_time_left() -> None:
    clock = Clock()
    progress, _ = _progress(clock, total=2)
    clock.now += 10
    progress.epoch("a", "search-a", 1, {METRIC: 0.5})
    assert progress.left() == 70.0  # 3 + 4 epochs at 10 s
    clock.now += 10
    progress.epoch("a", "search-a", 2, {METRIC: 0.5})
    line = progress.finished("a", "search-a", "stopped early after epoch 2")
    assert line == "trial 1/2 search-a  stopped early after epoch 2 | 20s, ~40s left"
    assert progress.left() == 40.0  # only the 4 epochs of trial 2, at 10 s each


def test_a_resumed_study_continues_the_numbers_and_measures_only_its_own_epochs() -> None:
    clock = Clock()
    progress, _ = _progress(clock)
    done = TrialRecord(
        "r1",
        kind="reference",
        history=[{"epoch": 1, METRIC: 0.4}, {"epoch": 2, METRIC: 0.6, "test/ndcg@10": 0.5}],
    )
    half = TrialRecord("s1", history=[{"epoch": 1, METRIC: 0.3}])  # was running when killed
    progress.resume([done, half])
    assert progress.left() is None  # nothing measured yet by this driver
    clock.now += 30
    # the restored trial re-reports its checkpoint's epoch 1, then trains epoch 2
    progress.epoch("s1", "search-s1", 1, {METRIC: 0.3})
    line = progress.epoch("s1", "search-s1", 2, {METRIC: 0.35})
    assert line.startswith("trial 2/3 search-s1  epoch 2/4")
    assert "best 0.6000 (trial 1 reference)" in line
    # 1 new epoch in 30 s; left: 2 epochs of s1 + 4 of the trial to come (the reference is done)
    assert progress.left() == 180.0


def test_durations() -> None:
    assert [duration(s) for s in (0, 42.4, 60, 400, 7500)] == [
        "0s",
        "42s",
        "1m00s",
        "6m40s",
        "2h05m",
    ]
