"""The study's console lines (study/progress.py): trial numbers, the best so far, the time left."""

from __future__ import annotations

import dataclasses
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


def _progress(
    clock: Clock, total: int = 3, mode: str = "max", concurrent: int = 1
) -> tuple[StudyProgress, io.StringIO]:
    out = io.StringIO()
    progress = StudyProgress(
        total=total,
        epochs=4,
        metric=METRIC,
        mode=mode,
        concurrent=concurrent,
        stream=out,
        clock=clock,
    )
    return progress, out


def test_a_line_names_the_trial_its_epoch_value_best_and_times() -> None:
    clock = Clock()
    progress, out = _progress(clock)
    clock.now += 10
    line = progress.epoch("r1", "reference", 1, {METRIC: 0.25, "train/loss": 2.5}, seconds=10)
    assert out.getvalue() == line + "\n"
    assert line.startswith("trial 1/3 reference  epoch 1/4 | val/ndcg@10 0.2500  train/loss 2.5000")
    assert "best 0.2500 (trial 1 reference)" in line
    # 10 s per epoch; left: 3 epochs of this trial + 2 trials x 4 epochs = 11 epochs
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


def test_the_time_left_expects_trials_to_stop_as_early_as_the_finished_ones() -> None:
    clock = Clock()
    progress, _ = _progress(clock, total=3)
    clock.now += 10
    progress.epoch("a", "search-a", 1, {METRIC: 0.5}, seconds=10)
    assert progress.left() == 110.0  # 3 + 2 x 4 epochs at 10 s: nothing has stopped early yet
    clock.now += 10
    progress.epoch("a", "search-a", 2, {METRIC: 0.5}, seconds=20)
    line = progress.finished("a", "search-a", "stopped early after epoch 2")
    assert line == "trial 1/3 search-a  stopped early after epoch 2 | 20s, ~40s left"
    progress.epoch("b", "search-b", 1, {METRIC: 0.4}, seconds=10)
    assert progress.left() == 30.0  # b: 1 more epoch (a stopped at 2); the third: 2 epochs
    progress.epoch("b", "search-b", 2, {METRIC: 0.6}, seconds=20)
    progress.epoch("b", "search-b", 3, {METRIC: 0.7}, seconds=30)
    assert progress.left() == 30.0  # b passed a's stop: all its epochs; the third: 2 epochs


def test_the_time_left_is_shared_by_the_trials_that_run_at_once() -> None:
    progress, _ = _progress(Clock(), total=3, concurrent=2)
    progress.epoch("r", "reference", 4, {METRIC: 0.5}, seconds=40)
    progress.finished("r", "reference", "completed")
    assert progress.left() == 40.0  # 2 trials x 4 epochs x 10 s, two at a time


def test_a_resumed_study_continues_the_numbers_and_the_times() -> None:
    clock = Clock()
    progress, _ = _progress(clock)
    done = TrialRecord(
        "r1",
        kind="reference",
        history=[{"epoch": 1, METRIC: 0.4}, {"epoch": 2, METRIC: 0.6, "test/ndcg@10": 0.5}],
    )
    half = TrialRecord("s1", history=[{"epoch": 1, METRIC: 0.3}], wall_s=10.0)  # killed mid-run
    done = dataclasses.replace(done, wall_s=20.0)
    progress.resume([done, half])
    assert progress.left() == 70.0  # 10 s per epoch: 3 epochs of s1, 4 of the trial to come
    clock.now += 30
    # the restored trial re-reports its checkpoint's epoch 1, then trains epoch 2
    progress.epoch("s1", "search-s1", 1, {METRIC: 0.3}, seconds=12)
    line = progress.epoch("s1", "search-s1", 2, {METRIC: 0.35}, seconds=25)
    assert line.startswith("trial 2/3 search-s1  epoch 2/4")
    assert "best 0.6000 (trial 1 reference)" in line
    assert progress.left() == 67.5  # (20 + 25) s / 4 epochs; 2 epochs of s1 + 4 to come


def test_durations() -> None:
    assert [duration(s) for s in (0, 42.4, 60, 400, 7500)] == [
        "0s",
        "42s",
        "1m00s",
        "6m40s",
        "2h05m",
    ]
