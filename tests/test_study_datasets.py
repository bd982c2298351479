"""A study across two datasets on Ray: one driver runs one study per dataset folder, one after
another, each in its own folder, and ends with their leaderboards merged into one table with a
``dataset`` column; ``study/leaderboard.py`` prints the same table from the two folders."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from study import run_search

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

#: One searched trial per dataset, no reference, one epoch: the machinery, not the numbers.
SPACE = """
base = "base.toml"
[study]
name = "cross"
datasets = {datasets}
sampler = "random"
num_samples = 1
scheduler = "none"
workers_per_trial = 1
cpus_per_worker = 0.5
max_concurrent_trials = 1
max_failures = 0
reference = false
[params."loss.alpha"]
type = "float"
low = 0.1
high = 1.0
log = true
"""


@pytest.fixture(scope="module")
def cross_study(
    ray_local: None, tiny_study_base: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The finished two-dataset study (both synthetic folders are built by the run itself);
    returns the storage folder and what the run printed."""
    root = tmp_path_factory.mktemp("cross")
    base = tiny_study_base.format(data=root / "unused").replace("epochs = 2", "epochs = 1")
    (root / "base.toml").write_text(base)
    datasets = [str(root / "data" / "beauty"), str(root / "data" / "toys")]
    (root / "space.toml").write_text(SPACE.format(datasets=json.dumps(datasets)))
    argv = ["--space", str(root / "space.toml"), "--storage", str(root / "studies")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the driver's prints; the shared Ray stays up
        code = run_search.main(argv)
    assert code == 0, out.getvalue()[-3000:]
    return root / "studies", out.getvalue()


def test_each_dataset_gets_its_own_finished_study_on_its_own_data(
    cross_study: tuple[Path, str],
) -> None:
    storage, _ = cross_study
    for name in ("beauty", "toys"):
        folder = storage / f"cross-{name}"
        assert (folder / "study_done.json").exists()
        configs = list((folder / "configs").glob("*.json"))
        assert len(configs) == 1  # one searched trial, no reference
        data = json.loads(configs[0].read_text())["data"]["path"]
        assert Path(data) == storage.parent / "data" / name
        rows = pq.read_table(folder / "leaderboard.parquet").to_pylist()
        assert [(r["dataset"], r["status"], r["rank"]) for r in rows] == [(name, "completed", 1)]


def test_the_run_ends_with_the_merged_table(cross_study: tuple[Path, str]) -> None:
    storage, out = cross_study
    merged = pq.read_table(storage / "cross.parquet")
    rows = [(r["dataset"], r["study"], r["rank"]) for r in merged.to_pylist()]
    assert rows == [("beauty", "cross-beauty", 1), ("toys", "cross-toys", 1)]
    assert all(0.0 <= v <= 1.0 for v in merged.column("val/ndcg@10").to_pylist())
    tail = out[out.index("the 2 studies' leaderboards in one table") :]
    header = tail.splitlines()[1]
    assert header.split()[:3] == ["rank", "study", "dataset"] and "loss.alpha" in header


def test_leaderboard_cli_prints_the_same_table_and_a_rerun_trains_nothing(
    cross_study: tuple[Path, str],
) -> None:
    storage, _ = cross_study
    folders = [str(storage / "cross-beauty"), str(storage / "cross-toys")]
    proc = subprocess.run(
        [sys.executable, "study/leaderboard.py", *folders], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split()[:3] for line in proc.stdout.strip().splitlines()[1:3]]
    assert rows == [["1", "cross-beauty", "beauty"], ["1", "cross-toys", "toys"]]
    before = (storage / "cross.parquet").stat().st_mtime_ns
    argv = ["--space", str(storage.parent / "space.toml"), "--storage", str(storage)]
    assert run_search.main(argv) == 0  # both finished: their leaderboards, no Ray trial
    assert (storage / "cross.parquet").stat().st_mtime_ns > before  # the table written again
