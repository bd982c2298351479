"""study/console.py: while a study runs quietly, Ray's and Optuna's chatter goes to the study's
log file and only warnings and errors reach the terminal."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from study.console import quiet


@pytest.fixture
def ray_terminal() -> Iterator[io.StringIO]:
    """A terminal handler on Ray's logger, as Ray gives it one when imported (Ray's own writes to
    the stderr of that moment, which pytest's capture may not be)."""
    import optuna
    import ray  # noqa: F401  (Ray sets its logger up when imported: level INFO, a handler)

    # The loggers as a study driver has them, whatever earlier tests in this process did: a test
    # that ran Ray Train's controller or worker code here left "ray.train" with propagate False
    # (Train's own logging config), an earlier report left Optuna at WARNING.
    names = ("ray", "ray.train", "ray.tune")
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names}
    verbosity = optuna.logging.get_verbosity()
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO if name == "ray" else logging.NOTSET)
        logging.getLogger(name).propagate = True
    optuna.logging.set_verbosity(optuna.logging.INFO)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("ray").addHandler(handler)
    yield stream
    logging.getLogger("ray").removeHandler(handler)
    optuna.logging.set_verbosity(verbosity)
    for name, (level, propagate) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).propagate = propagate


def test_chatter_goes_to_the_log_and_warnings_still_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_terminal: io.StringIO
) -> None:
    log = tmp_path / "study" / "ray.log"
    tune = logging.getLogger("ray.tune.execution.tune_controller")
    with quiet(log) as terminal:
        print("Configuration for experiment: search")  # what Tune prints
        logging.getLogger("ray.train").info("Started training worker group of size 2")
        logging.getLogger("optuna").info("A new study created in RDB with name: s")
        logging.getLogger("ray.tune").warning("No trial is running: the cluster lacks CPUs")
        tune.error("Trial task failed for trial search_1", exc_info=ValueError("boom"))
        logging.getLogger("ray.tune.utils.util").warning(
            "The `process_trial_result` operation took 0.803 s, which may be a performance "
            "bottleneck."
        )
        logging.getLogger("ray.tune.tune").warning(
            "Experiment has been interrupted, but the most recent state was saved.\n"
            "Resume experiment with: Tuner.restore(...)"
        )
        print("trial 1/2 search-a  epoch 1/2", file=terminal)
    print("after")  # stdout is the terminal again
    out, err = capsys.readouterr()
    shown = out + err + ray_terminal.getvalue()
    text = log.read_text()
    chatter = (
        "Configuration for experiment",
        "worker group",
        "A new study",
        "boom",
        "Tuner.",
        "process_trial_result",
    )
    for line in chatter:
        assert line in text and line not in shown, line
    assert out == "trial 1/2 search-a  epoch 1/2\nafter\n"
    assert "the cluster lacks CPUs" in ray_terminal.getvalue()
    assert "the cluster lacks CPUs" in text
    logging.getLogger("ray.train").info("not quiet any more")  # filters and file handler removed
    assert "not quiet any more" in ray_terminal.getvalue()
    assert "not quiet any more" not in log.read_text()
