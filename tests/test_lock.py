"""One driver per study folder (study/lock.py): a second live driver is refused before Ray starts,
naming the first; the lock of a killed driver is taken over at once. No Ray here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from study import lock, run_search

REPO = Path(__file__).resolve().parents[1]

BASE = """
[data]
path = "{data}"
[data.synthetic]
users = 60
items = 32
shapes = 4
brands = 4
colours = 2
[embedder]
name = "tiny-clip"
[train]
epochs = 2
"""

SPACE = """
base = "base.toml"
[study]
name = "locked"
num_samples = 2
max_t = 2
grace_period = 1
cpus_per_worker = 0.5
[params."loss.alpha"]
type = "float"
low = 0.1
high = 1.0
"""

HOLDER = """
import sys, time
from pathlib import Path
from study.lock import hold
with hold(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _argv(root: Path) -> list[str]:
    (root / "base.toml").write_text(BASE.format(data=root / "data"))
    (root / "space.toml").write_text(SPACE)
    return ["--space", str(root / "space.toml"), "--storage", str(root / "studies")]


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another driver (process) holding the study folder's lock."""
    study_dir = tmp_path / "studies" / "locked"
    study_dir.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(study_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_driver_is_refused_naming_the_first(
    tmp_path: Path, holder: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    ray_was_up = _ray_up()  # the suite's shared Ray may run; this refusal must not start one
    rc = run_search.main(_argv(tmp_path))  # a real run, refused before Ray
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == run_search.EXIT_BAD_INPUT and len(lines) == 1, lines
    assert lines[0].startswith("error: --storage: study folder")
    assert f"pid {holder.pid} on host {socket.gethostname()}" in lines[0]
    assert _ray_up() == ray_was_up


def test_dry_run_of_a_running_study_warns_and_takes_nothing(
    tmp_path: Path, holder: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_search.main([*_argv(tmp_path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: this study is running now") and f"pid {holder.pid}" in err
    assert holder.poll() is None  # still the holder


def test_lock_of_a_killed_driver_is_taken_over(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    study_dir = tmp_path / "studies" / "locked"
    with pytest.raises(lock.StudyLockedError), lock.hold(study_dir):
        pass
    os.kill(holder.pid, signal.SIGKILL)  # a driver killed mid-study: no cleanup ran
    holder.wait()
    assert lock.held_by(study_dir) is None  # the kernel released it with the process
    with lock.hold(study_dir) as previous:
        assert previous is not None and previous.pid == holder.pid
        assert lock.held_by(study_dir) is not None
        assert lock.held_by(study_dir).pid == os.getpid()  # type: ignore[union-attr]
    with lock.hold(study_dir) as previous:  # a clean exit leaves no name to take over
        assert previous is None


def test_a_real_run_says_whose_lock_it_took_over(
    tmp_path: Path,
    holder: subprocess.Popen[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    study_dir = tmp_path / "studies" / "locked"
    seen = []

    def run_on_ray(plans: object, fits: object) -> int:  # stands in for the studies themselves
        seen.append(lock.held_by(study_dir))
        return 0

    monkeypatch.setattr(run_search, "_run_on_ray", run_on_ray)
    assert run_search.main(_argv(tmp_path)) == 0
    assert f"took over the study lock of pid {holder.pid}" in capsys.readouterr().out
    assert seen and seen[0] is not None and seen[0].pid == os.getpid()  # held while it ran
    assert lock.held_by(study_dir) is None
