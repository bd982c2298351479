"""One driver per study folder: a lock the kernel releases when its holder dies.

Two drivers on one study folder write the same Tune state and ``optuna.db``: the second one
(tried) dies 25 s later in an Optuna ``UpdateFinishedTrialError`` traceback, after both have
corrupted each other's trial states. :func:`hold` refuses the second before Ray starts.

The lock is an exclusive ``flock`` on ``<study>/driver.lock``, held by an open file for the life
of the driver, with the holder's pid, host, start time and command written inside. Because the
kernel drops a ``flock`` when the process holding it dies (SIGKILL, OOM, a lost terminal), a lock
left by a killed driver is never in force: the next driver takes it at once and says whose it
was; there is no pid-liveness guess and no timeout. Two drivers racing for it cannot both win.
Over NFS, Linux maps ``flock`` to the server's byte-range locks, so drivers on different hosts
exclude each other too. The file descriptor is not inherited by the processes Ray starts
(Python opens files non-inheritable), so the lock does not outlive the driver in a raylet.

Ray-free: the driver takes the lock before anything pays for a Ray start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from study.plan import PreflightError

__all__ = ["Holder", "StudyLockedError", "held_by", "hold"]


class StudyLockedError(PreflightError):
    """Another live process runs this study; the message names its pid and host."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a study's lock."""

    pid: int  #: process id on ``host``
    host: str  #: ``socket.gethostname()`` of the holder
    started: str  #: when it took the lock (ISO 8601, local time with offset)
    command: str  #: its command line

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.started}: {self.command})"


def _me() -> Holder:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return Holder(os.getpid(), socket.gethostname(), now, " ".join(sys.argv) or "python")


def _read(fd: int) -> Holder | None:
    """The holder written in the lock file, or None (empty, or not this format)."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    try:
        data: Any = json.loads(raw)
        return Holder(**{f.name: data[f.name] for f in dataclasses.fields(Holder)})
    except (ValueError, TypeError, KeyError):
        return None


def _write(fd: int, holder: Holder) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(dataclasses.asdict(holder)) + "\n").encode())
    os.fsync(fd)


def _try_lock(fd: int, path: Path) -> bool:
    """Take the exclusive lock without waiting; False if another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise PreflightError(
            f"--storage: cannot lock {path} ({exc.strerror or exc}); the study folder must be "
            "on a file system with flock (a local disk, or NFS with its lock service)"
        ) from None
    return True


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PreflightError(f"--storage: cannot open {path} ({exc.strerror or exc})") from None


def held_by(study_dir: Path) -> Holder | None:
    """The live driver holding ``study_dir``'s lock, or None when nobody holds it (or there is no
    study folder yet). Looks only: takes nothing (used by ``--dry-run``)."""
    path = study_dir / "driver.lock"
    if not path.exists():
        return None
    fd = _open(path)
    try:
        if _try_lock(fd, path):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _read(fd) or Holder(0, "?", "?", "unreadable lock file")
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(study_dir: Path) -> Iterator[Holder | None]:
    """Hold ``study_dir``'s lock for the ``with`` block; yields the previous holder when a
    driver died holding it (its lock is taken over: the kernel released it), else None.

    Raises :class:`StudyLockedError` (exit 2, before Ray starts) naming the live holder.
    """
    path = study_dir / "driver.lock"
    fd = _open(path)
    try:
        if not _try_lock(fd, path):
            holder = _read(fd)
            who = holder.describe() if holder else "another process (unreadable lock file)"
            raise StudyLockedError(
                f"--storage: study folder {study_dir} is being run by {who}; wait for it to "
                "finish or stop it, then rerun this command to resume (two drivers would "
                "corrupt its Tune state and optuna.db)"
            )
        previous = _read(fd)  # only a driver that died holding the lock leaves its name
        _write(fd, _me())
        try:
            yield previous
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves no name behind
    finally:
        os.close(fd)  # closing the file releases the lock
