"""The console of a study as a user runs it: ``python study/run_search.py`` in a subprocess, with
its own Ray. By default it prints only the study's own lines (Ray's go to ``<study>/ray.log`` and
Ray's session logs); ``--verbose`` brings Ray's worker logs back. The default run also has ASHA
stop a trial, which ``optuna.db`` then holds as PRUNED."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

SPACE = """
base = "base.toml"
[study]
name = "{name}"
sampler = "grid"
sampler_seed = 1           # the grid's order: lr 0.002 first, then the untrainable 1e-12
num_samples = {samples}
scheduler = "asha"         # so the 1e-12 trial, worse at the first rung, is stopped there
max_t = 2
grace_period = 1
reduction_factor = 2
workers_per_trial = 1
cpus_per_worker = 0.5
max_concurrent_trials = 1
max_failures = 0
reference = false
[params."optim.lr"]
type = "categorical"
choices = {choices}
"""

#: How Ray prefixes a line a worker process printed: "(RayTrainWorker pid=123) ...".
WORKER_LINE = re.compile(r"\(\w+ pid=\d+")
#: Chatter seen on the terminal before the console was quieted (Train, Tune).
CHATTER = ("Checkpoint successfully created", "Configuration for experiment", "worker group")


def _run_study(
    root: Path, base: str, name: str, choices: str, samples: int, *flags: str
) -> tuple[str, str]:
    """Run a tiny study (``base``: tests/conftest.py's TINY_STUDY_BASE) in ``root``; return its
    stdout and stderr."""
    (root / "base.toml").write_text(base.format(data=root / "data"))
    (root / "space.toml").write_text(SPACE.format(name=name, choices=choices, samples=samples))
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "RAY_ADDRESS" and not k.startswith("RAY_API_SERVER")  # the suite's own Ray
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    argv = ["--space", str(root / "space.toml"), "--storage", str(root / "studies"), *flags]
    proc = subprocess.run(
        [sys.executable, str(REPO / "study" / "run_search.py"), *argv],
        cwd=REPO,  # Ray workers import the project from the driver's directory
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def test_by_default_the_console_shows_the_studys_lines_only(
    tmp_path: Path, tiny_study_base: str
) -> None:
    out, err = _run_study(tmp_path, tiny_study_base, "quiet", "[0.002, 1e-12]", 2)
    study = tmp_path / "studies" / "quiet"
    assert not WORKER_LINE.search(out) and not WORKER_LINE.search(err), out + err
    assert not any(c in out + err for c in CHATTER), out + err
    assert "\x1b[" not in out  # no colour codes: nothing of Ray's coloured output
    log = study / "ray.log"
    assert f"ray's output:   {log} (driver)" in out
    assert "Configuration for experiment" in log.read_text()  # Tune's table went to the log
    trial_lines = [line for line in out.splitlines() if line.startswith("trial ")]
    epoch = re.compile(
        r"trial [12]/2 search-\w+  epoch [12]/2 \| val/ndcg@10 \d\.\d{4}  train/loss \d+\.\d{4}"
        r" \| best \d\.\d{4} \(trial 1 search-\w+\) \| \w+(, ~\w+ left)?"
    )
    epochs = [line for line in trial_lines if re.match(r"trial \S+ \S+  epoch ", line)]
    assert len(epochs) == 3 and all(epoch.fullmatch(line) for line in epochs), trial_lines
    assert trial_lines[-1].startswith("trial 2/2 search-")
    assert "  stopped early after epoch 1: best val/ndcg@10" in trial_lines[-1]

    import optuna
    from optuna.trial import TrialState

    optuna_study = optuna.load_study(study_name="quiet", storage=f"sqlite:///{study}/optuna.db")
    states = {t.params["optim.lr"]: t for t in optuna_study.trials}
    assert states[0.002].state is TrialState.COMPLETE
    assert sorted(states[0.002].intermediate_values) == [1, 2]
    pruned = states[1e-12]
    assert pruned.state is TrialState.PRUNED and list(pruned.intermediate_values) == [1]
    assert pruned.value == pruned.intermediate_values[1]


def test_verbose_brings_rays_worker_logs_back(tmp_path: Path, tiny_study_base: str) -> None:
    out, err = _run_study(tmp_path, tiny_study_base, "loud", "[0.002]", 1, "--verbose")
    assert WORKER_LINE.search(out + err), out + err
    assert "Checkpoint successfully created" in out + err
    assert "ray's output:   here (--verbose)" in out
