"""End-to-end local study on Ray: reference + grid trials, ASHA, a failing trial, leaderboard,
TensorBoard read back with TensorBoard's own reader, and a rerun that reports the study finished."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from study import run_search

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPACE = """
base = "base.toml"
[study]
name = "e2e"
sampler = "grid"
num_samples = 4
scheduler = "asha"
max_t = 2
grace_period = 1
reduction_factor = 2
workers_per_trial = 2
cpus_per_worker = 0.5
max_concurrent_trials = 1
max_failures = 0           # a non-finite loss is deterministic: retrying it only costs time
reference = true
[params."loss.alpha"]
type = "categorical"
choices = [0.1, 1.0]
[params."optim.lr"]        # lr = 1e30 makes the loss NaN at the second step: a failing trial
type = "categorical"
choices = [0.002, 1e30]
"""


@pytest.fixture(scope="module")
def finished_study(
    ray_local: None, tiny_study_base: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("study")
    (root / "base.toml").write_text(tiny_study_base.format(data=root / "data"))
    (root / "space.toml").write_text(SPACE)
    argv = ["--space", str(root / "space.toml"), "--storage", str(root / "studies")]
    assert run_search.main(argv) == 0
    return root / "studies" / "e2e"


#: a second Ray on the machine, as when another user or job runs one; it stops when stdin closes
OTHER_RAY = (
    "import ray, sys; ray.init(num_cpus=1, include_dashboard=False); print('up', flush=True); "
    "sys.stdin.read(); ray.shutdown()"
)


@pytest.fixture
def other_ray() -> Iterator[None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_API_SERVER")}
    proc = subprocess.Popen(
        [sys.executable, "-c", OTHER_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=env, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    yield
    proc.communicate(input="", timeout=120)


def test_ray_processes_find_our_dashboard_beside_another_ray(
    ray_local: None, other_ray: None
) -> None:
    """Train frees the workers of a trial ASHA stopped through the state API, from inside a Ray
    worker. Left to find "the" local Ray itself, that lookup fails when a second Ray runs on the
    machine ("Found multiple active Ray instances"), and every stopped trial's workers would then
    keep their CPUs; tune_runner.start_local_ray tells every process of ours where to look."""
    import ray
    from ray.util.state import list_placement_groups

    @ray.remote(num_cpus=0)
    def state_api_call() -> int:
        return len(list_placement_groups())

    assert ray.get(state_api_call.remote(), timeout=60) >= 0


#: a study's local Ray started where RAY_API_SERVER_ADDRESS names another dashboard (here a port
#: nothing listens on), as in a shell that ran another Ray: its workers must still find its own
STALE_DASHBOARD = (
    "import os, ray; os.environ['RAY_API_SERVER_ADDRESS'] = 'http://127.0.0.1:9'; "
    "from study.tune_runner import start_local_ray, use_auth_mode; use_auth_mode(); "
    "start_local_ray(num_cpus=1, log_to_driver=False); "
    "from ray.util.state import list_nodes; "
    "print(ray.get(ray.remote(num_cpus=0)(lambda: len(list_nodes())).remote(), timeout=60))"
)


def test_a_stale_dashboard_address_does_not_mislead_a_local_study() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(Path(run_search.__file__).parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", STALE_DASHBOARD], env=env, capture_output=True, text=True,
        timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "1"


def test_no_placement_group_outlives_the_study(finished_study: Path) -> None:
    from ray.util import placement_group_table

    deadline = time.monotonic() + 30  # Train's cleaner polls: give it a few rounds
    states = [pg["state"] for pg in placement_group_table().values()]
    while time.monotonic() < deadline and any(state != "REMOVED" for state in states):
        time.sleep(1)
        states = [pg["state"] for pg in placement_group_table().values()]
    assert states and all(state == "REMOVED" for state in states), states


def test_leaderboard_has_one_row_per_trial_and_the_reference(finished_study: Path) -> None:
    table = pq.read_table(finished_study / "leaderboard.parquet")
    rows = table.to_pylist()
    assert len(rows) == 5  # 2 x 2 grid + the alpha = beta = 0 reference
    for col in (
        "study",
        "trial_id",
        "kind",
        "status",
        "error",
        "param.loss.alpha",
        "param.optim.lr",
        "best_epoch",
        "val/ndcg@10",
        "val/ndcg@10/image",
        "test/ndcg@10",
        "epochs",
        "wall_s",
        "gpu_s",
        "checkpoint_path",
        "config",
        "command",
        "seed",
        "config_hash",
        "data_fingerprint",
        "git_sha",
        "torch_version",
        "rank",
    ):
        assert col in table.column_names, col
    (ref,) = [r for r in rows if r["kind"] == "reference"]
    assert ref["param.loss.alpha"] == 0.0 and ref["status"] == "completed"
    assert 0.0 <= ref["test/ndcg@10"] <= 1.0
    assert json.loads(ref["config"])["loss"]["beta"] == 0.0


def test_failing_trials_are_error_rows_and_the_study_goes_on(finished_study: Path) -> None:
    rows = pq.read_table(finished_study / "leaderboard.parquet").to_pylist()
    failed = [r for r in rows if r["param.optim.lr"] == 1e30]
    assert len(failed) == 2
    assert all(
        r["status"] == "error" and "non-finite loss at epoch 1" in r["error"] for r in failed
    )
    assert all(r["rank"] is None for r in failed)
    good = [r for r in rows if r["kind"] == "search" and r not in failed]
    assert {r["status"] for r in good} <= {"completed", "stopped_early"}
    assert sorted(r["rank"] for r in rows if r["rank"] is not None) == [1, 2, 3]


def test_tensorboard_runs_say_what_they_are_and_compare_at_a_glance(finished_study: Path) -> None:
    """Runs are named reference / search-<id>_<params>; the time series holds the per-epoch
    curves only (one-value summaries are in hparams, read from each run's best/ sub-run); the
    hparams table leads with the study metric and shows the leaderboard's best values."""
    from tb_hparams import hparams_table
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(finished_study / "tensorboard"))
    mux.Reload()
    runs = [r for r in mux.Runs() if "/" not in r]
    assert len(runs) == 5 and "reference" in runs
    number = r"[0-9.e+-]+"
    search = [r for r in runs if r != "reference"]
    assert all(re.fullmatch(rf"search-\w+_alpha={number}_lr={number}", r) for r in search), runs
    completed = [r for r in runs if "val/ndcg@10" in mux.GetAccumulator(r).Tags()["scalars"]]
    assert len(completed) >= 2  # reference + at least one searched trial reported epochs
    for run in completed:
        tags = set(mux.GetAccumulator(run).Tags()["scalars"])
        assert {"train/loss", "val/ndcg@10/text", "val/modality_balance"} <= tags
        assert all(t.startswith(("train/", "val/")) for t in tags), tags  # curves only
        assert set(mux.GetAccumulator(f"{run}/best").Tags()["scalars"]) <= tags
        assert "description" in "".join(mux.GetAccumulator(run).Tags()["tensors"])
    assert len(mux.PluginRunToTagToContent("hparams")) == 5  # every trial, failed ones too
    columns, values = hparams_table(finished_study / "tensorboard")
    assert columns[0] == "val/ndcg@10" and "val/anisotropy_image" in columns[1:]
    rows = pq.read_table(finished_study / "leaderboard.parquet").to_pylist()
    ref = next(r for r in rows if r["kind"] == "reference")
    assert values["reference"]["val/ndcg@10"] == pytest.approx(ref["val/ndcg@10"])


def test_optuna_db_states_follow_the_trial_records(finished_study: Path) -> None:
    """A trial ASHA stopped is PRUNED in optuna.db (not COMPLETE), with its per-epoch values."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{finished_study}/optuna.db")
    assert study.metric_names == ["val/ndcg@10"]
    trials = {(t.params["loss.alpha"], t.params["optim.lr"]): t for t in study.trials}
    rows = pq.read_table(finished_study / "leaderboard.parquet").to_pylist()
    expected = {"completed": TrialState.COMPLETE, "stopped_early": TrialState.PRUNED}
    for row in (r for r in rows if r["kind"] == "search"):
        trial = trials[(row["param.loss.alpha"], row["param.optim.lr"])]
        assert trial.state is expected.get(row["status"], TrialState.FAIL), row["status"]
        if row["status"] != "error":
            assert sorted(trial.intermediate_values) == list(range(1, row["epochs"] + 1))


def test_the_study_report_is_written(finished_study: Path) -> None:
    html = (finished_study / "report.html").read_text()
    pngs = sorted((finished_study / "report").glob("*.png"))
    assert pngs and all(p.name in html for p in pngs)


def test_rerun_of_a_finished_study_says_so(
    finished_study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = finished_study.parents[1]
    argv = ["--space", str(root / "space.toml"), "--storage", str(root / "studies")]
    assert run_search.main(argv) == 0
    assert "is finished" in capsys.readouterr().out


def test_trial_command_reproduces_a_run_config(finished_study: Path) -> None:
    from vlm2rec.config import load_config

    rows = pq.read_table(finished_study / "leaderboard.parquet").to_pylist()
    ref = next(r for r in rows if r["kind"] == "reference")
    config_file = ref["command"].split("--config ")[1].split()[0]
    cfg = load_config(config_file)
    assert cfg.loss.alpha == 0.0 and cfg.seed == ref["seed"]


def test_the_local_ray_of_a_study_requires_its_token(finished_study: Path) -> None:
    """Local studies run Ray with token authentication (study/tune_runner.py, LOCAL_RAY_ENV)."""
    import ray
    from ray_auth import dashboard_auth

    from study.tune_runner import DEFAULT_TOKEN

    url = ray._private.worker.get_dashboard_url()
    got = dashboard_auth(url, DEFAULT_TOKEN.expanduser())
    assert got == {"mode": "token", "without_token": 401, "with_token": 200}
