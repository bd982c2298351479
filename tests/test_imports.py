"""Imports point one way (docs/ARCHITECTURE.md, "Layers"): the library never depends on the
application, the study modules form no cycle, and the offline study tools stay Ray-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Study modules that must import without Ray (they run before Ray starts, or offline).
RAY_FREE = (
    "records",
    "search_space",
    "leaderboard",
    "plan",
    "lock",
    "progress",
    "console",
    "run_search",
    "report",
    "confirm",
    "cli",
)


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


def _study_imports(path: Path) -> set[str]:
    """The ``study.*`` modules a file imports anywhere, deferred imports inside functions too."""
    modules = {p.stem for p in (REPO / "study").glob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "study":
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("study.")}
    return found & modules - {path.stem}


def test_study_modules_import_each_other_without_a_cycle() -> None:
    graph = {p.stem: _study_imports(p) for p in (REPO / "study").glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            pytest.fail(f"import cycle: {' -> '.join((*path[path.index(module) :], module))}")
        if module not in done:
            for dep in sorted(graph[module]):
                visit(dep, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_offline_study_modules_import_without_ray() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {RAY_FREE!r}:\n"
        "    importlib.import_module('study.' + m)\n"
        "print(','.join(sorted(n for n in sys.modules if n.split('.')[0] == 'ray')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"imported Ray: {out.stdout.strip()[:200]}"


def test_a_tiny_clip_worker_imports_only_its_own_model_family() -> None:
    """A study's Train worker imports ``vlm2rec.train`` and builds one model: peft and the other
    families' modelling code (about 1 s of imports per worker process) stay out of it."""
    code = (
        "import sys, vlm2rec.train\n"
        "from vlm2rec.embedder import build_tiny\n"
        "build_tiny('tiny-clip', seed=0)\n"
        "mods = ('peft', 'transformers.models.qwen2_vl.modeling_qwen2_vl',\n"
        "        'transformers.models.qwen3_vl.modeling_qwen3_vl',\n"
        "        'transformers.models.siglip.modeling_siglip', 'transformers.models.clip.modeling_clip')\n"
        "print(','.join(m for m in mods if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "transformers.models.clip.modeling_clip"
