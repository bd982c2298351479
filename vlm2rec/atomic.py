"""Atomic file writes: a reader sees the old file or the new one, never a part of either.

The bytes go to a temporary file in the target's folder (same file system, so the rename is
atomic), are flushed and fsynced, and only then renamed over the target. Without the fsync a crash
shortly after the rename can leave the new name pointing at a file whose bytes never reached the
disk: an empty leaderboard or trial record after a power loss.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_text"]

# The process umask, read once (reading it means setting it, so not per call, where another thread
# could create a file meanwhile): mkstemp makes owner-only files, and a written file should get
# the permissions a plain open() would give it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(fh)``; on any failure the previous file stays as it was.

    The parent folder is created if needed; the temporary file is removed when ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda fh: fh.write(text.encode()))
