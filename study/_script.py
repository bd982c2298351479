"""Lets ``python study/<script>.py`` import the checkout the script is in.

Run as a file, a script gets its own folder, ``study/``, as ``sys.path[0]``: the package ``study``
is not importable from there (unless some copy is installed, maybe another checkout's), and the
sibling files (``records.py``, ``report.py``, ...) would shadow top-level modules of the same name.
Each script imports this module first when it runs as a file (``__package__`` is empty then), and
the entry is swapped for the repository root: the checkout's own packages come first.
``bench/overhead.py --before`` relies on it to time an older checkout's ``run_search.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)
