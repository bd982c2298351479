"""Shared helpers of the ``bench/`` scripts: the machine a result came from and its JSON file.

Every benchmark writes ``bench/results/<name>.json`` (committed: it is the evidence) holding a
``headline`` object ``{"name", "value", "unit"}``, the ``machine`` it ran on and whatever else the
script measured. Absolute times mean something only next to the machine description, so both travel
in the same file.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "git_sha",
    "headline",
    "machine",
    "mean_std",
    "write_result",
]

#: where result JSON files go (next to this module, so the path does not depend on the cwd)
RESULTS_DIR = Path(__file__).resolve().parent / "results"

_PACKAGES = ("torch", "transformers", "peft", "ray", "optuna", "numpy")


def _cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    """Names of visible CUDA devices; torch is imported only here so the helper stays cheap."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def git_sha(repo: Path | None = None) -> str | None:
    """The checked-out commit (with ``-dirty`` when tracked files changed), or ``None`` outside git."""
    cwd = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def machine() -> dict[str, Any]:
    """CPU model, logical cores, load average, GPUs, OS, and the versions that shape the numbers."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in load],
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        **{p: _version(p) for p in _PACKAGES},
        "git_sha": git_sha(),
    }


def headline(name: str, value: float, unit: str) -> dict[str, Any]:
    """The one number a benchmark stands for, in the shape every result file shares."""
    return {"name": name, "value": value, "unit": unit}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value, NaN for none)."""
    finite = [float(v) for v in values]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(var)


def _json_safe(obj: Any) -> Any:
    """NaN/inf become ``None`` (strict JSON has no NaN); paths become strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_result(
    name: str,
    head: Mapping[str, Any],
    payload: Mapping[str, Any],
    out: Path | None = None,
) -> Path:
    """Write ``{"name", "headline", "machine", "written_at", **payload}`` atomically; return the path.

    ``out`` overrides the default ``bench/results/<name>.json``.
    """
    missing = {"name", "value", "unit"} - set(head)
    if missing:
        raise ValueError(
            f"headline of {name!r} lacks {sorted(missing)} (expected name, value, unit)"
        )
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "headline": dict(head),
        "machine": machine(),
        "written_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **payload,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(doc), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path
