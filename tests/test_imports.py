"""The library never depends on the application (DESIGN.md: study -> vlm2rec, never back)."""

from __future__ import annotations

import subprocess
import sys


def test_vlm2rec_imports_no_ray_optuna_or_study() -> None:
    code = (
        "import sys, pkgutil, importlib, vlm2rec\n"
        "for m in pkgutil.walk_packages(vlm2rec.__path__, 'vlm2rec.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'optuna', 'study'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"vlm2rec pulled in: {out.stdout.strip()}"
