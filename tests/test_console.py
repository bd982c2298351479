"""study/console.py: while a study runs quietly, Ray's and Optuna's chatter goes to the study's
log file and only warnings and errors reach the terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from study.console import quiet


def test_chatter_goes_to_the_log_and_warnings_still_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray  # noqa: F401  (Ray gives its logger its terminal handler when imported)

    log = tmp_path / "study" / "ray.log"
    tune = logging.getLogger("ray.tune.execution.tune_controller")
    with quiet(log) as terminal:
        print("Configuration for experiment: search")  # what Tune prints
        logging.getLogger("ray.train").info("Started training worker group of size 2")
        logging.getLogger("optuna").info("A new study created in RDB with name: s")
        logging.getLogger("ray.tune").warning("No trial is running: the cluster lacks CPUs")
        tune.error("Trial task failed for trial search_1", exc_info=ValueError("boom"))
        logging.getLogger("ray.tune.tune").warning(
            "Experiment has been interrupted, but the most recent state was saved.\n"
            "Resume experiment with: Tuner.restore(...)"
        )
        print("trial 1/2 search-a  epoch 1/2", file=terminal)
    print("after")  # the terminal is back
    out, err = capsys.readouterr()
    text = log.read_text()
    chatter_seen = ("Configuration for experiment", "worker group", "A new study", "boom", "Tuner.")
    for chatter in chatter_seen:
        assert chatter in text and chatter not in out + err, chatter
    assert out == "trial 1/2 search-a  epoch 1/2\nafter\n"
    assert "the cluster lacks CPUs" in err and "the cluster lacks CPUs" in text
    assert sys.stdout is not None and logging.getLogger("ray").handlers  # all put back
    logging.getLogger("ray.train").info("not quiet any more")
    assert "not quiet any more" in capsys.readouterr().err
    assert "not quiet any more" not in log.read_text()
