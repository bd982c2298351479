"""What reaches the terminal while a study runs: its own lines, and Ray's only when they matter.

Ray, Train, Tune and Optuna talk a lot: every Train worker logs each checkpoint it saves, the Train
controller each worker group it starts, DDP warns from every rank, Tune prints a table per
experiment. A study's console shows its own lines instead (``study/progress.py``), and by default
:func:`quiet` sends the chatter of the study driver to ``<study>/ray.log``:

* ``sys.stdout`` is the log file while it lasts (Tune ``print``\\ s its tables); the study's own
  lines go to the terminal stream it yields;
* the loggers of Ray (Tune and Train included) and Optuna write to the log file, and to the
  terminal only from WARNING up, so warnings and errors that ask something of the user still show;
* except a few of Tune's that the study says in its own words or that ask nothing of the user
  (:data:`_LOG_ONLY`): the traceback of a failed trial (the study prints one line for each,
  naming its error file), the advice to call ``Tuner.restore`` after Ctrl-C, and notes that a
  result took over 0.5 s to handle.

What Ray's worker processes print is not sent to the driver at all: ``tune_runner`` starts or
joins Ray with ``log_to_driver=False``, and it stays in Ray's session logs. ``--verbose`` skips
all of this. Ray-free: it knows Ray's loggers by name only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["ROUTED_LOGGERS", "quiet"]

#: The loggers whose records go to the log file (their children's records pass through them).
ROUTED_LOGGERS = ("ray", "optuna")
#: (logger, text in the message) of warnings and errors kept off the terminal: Tune's traceback of
#: a failed trial (the study prints the error's summary and its error file), its advice after
#: Ctrl-C to call ``Tuner.restore`` (the study says to rerun its command, which does that), and
#: its notes that handling a result took over 0.5 s (``warn_if_slow``: on a loaded machine the
#: study's own callback does, when it writes a trial's first files), which ask nothing of the user.
_LOG_ONLY = (
    ("ray.tune.execution.tune_controller", "Trial task failed"),
    ("ray.tune.tune", "Experiment has been interrupted"),
    ("ray.tune.utils.util", "may be a performance bottleneck"),
)


class _TerminalFilter(logging.Filter):
    """Lets through to the terminal what a user must see: WARNING and up, but not
    :data:`_LOG_ONLY`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(record.name == name and text in message for name, text in _LOG_ONLY)


def _loggers() -> list[logging.Logger]:
    """The routed loggers, each with the handlers its library gives it: Optuna adds its terminal
    handler when it is first imported, so it is imported (when installed) before looking."""
    if importlib.util.find_spec("optuna") is not None:
        import optuna  # noqa: F401

    return [logging.getLogger(name) for name in ROUTED_LOGGERS]


@contextlib.contextmanager
def quiet(log_file: Path) -> Iterator[TextIO]:
    """Send the study driver's chatter to ``log_file`` (appended) for the ``with`` block and
    yield the terminal's stream for the study's own lines (module docstring)."""
    terminal = sys.stdout
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8", buffering=1) as fh:
        to_file = logging.StreamHandler(fh)
        to_file.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s:%(lineno)d -- %(message)s")
        )
        loggers = _loggers()
        terminal_handlers = [h for logger in loggers for h in logger.handlers]
        terminal_filter = _TerminalFilter()
        for handler in terminal_handlers:
            handler.addFilter(terminal_filter)
        for logger in loggers:
            logger.addHandler(to_file)
        try:
            with contextlib.redirect_stdout(fh):
                yield terminal
        finally:
            for logger in loggers:
                logger.removeHandler(to_file)
            for handler in terminal_handlers:
                handler.removeFilter(terminal_filter)
