"""Fault drills: what a real cluster does to a study, replayed on a local Ray with the tiny model.

Drills that kill processes run ``python study/run_search.py`` as a subprocess in its own session
(process group) with its own Ray instance, so a SIGKILL takes the whole driver down like a lost head
node, and the environment (fault injection, fast Train health checks) reaches the Train workers
through the Ray processes it starts. The storage drills are unit-level (no Ray).

* worker killed mid-epoch + a non-finite loss in the same study (one Ray start for both);
* driver SIGKILLed, then Ctrl-C (SIGINT to the process group), then a rerun that finishes;
* SIGTERM handled as Ctrl-C (unit-level, with Tune's own handler);
* SIGTERM to the driver's process group, which stops the local Ray's own processes too;
* leaderboard write on a full disk / an unwritable folder.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from namespace_drill import checkpointed_epoch, optuna_states

from study import run_search
from study.leaderboard import LeaderboardError, read_leaderboard, write_leaderboard
from study.worker import FAULT_ENV, _final_report, fault_due
from vlm2rec.checkpoint import PROGRESS

REPO = Path(__file__).resolve().parents[1]

SPACE = """
base = "base.toml"
[study]
name = "{name}"
sampler = "grid"
num_samples = {num_samples}
scheduler = "none"
max_t = {epochs}
grace_period = 1
workers_per_trial = 2
cpus_per_worker = 0.5
max_concurrent_trials = 1
reference = {reference}
max_failures = {max_failures}
[params."{param}"]
type = "categorical"
choices = {choices}
"""

#: What the drills add to the environment: the driver's log lines as they are printed. Ray's and
#: Tune's settings are the ones a study sets itself (``STUDY_ENV``, ``LOCAL_RAY_ENV``), so the
#: drills run with the product's.
DRILL_ENV = {"PYTHONUNBUFFERED": "1"}


# ---- helpers ----------------------------------------------------------------------------------
def _study(
    root: Path,
    base: str,
    name: str,
    *,
    reference: bool,
    param: str,
    choices: str,
    max_failures: int = 0,
    epochs: int = 2,
) -> list[str]:
    """Write base + space TOML under ``root`` (one grid trial per choice); return the argv."""
    base = base.format(data=root / "data").replace("epochs = 2", f"epochs = {epochs}")
    (root / "base.toml").write_text(base)
    space = SPACE.format(
        num_samples=choices.count(",") + 1,
        epochs=epochs,
        name=name,
        reference=str(reference).lower(),
        max_failures=max_failures,
        param=param,
        choices=choices,
    )
    (root / "space.toml").write_text(space)
    return ["--space", str(root / "space.toml"), "--storage", str(root / "studies")]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and k not in FAULT_ENV}
    return {**env, **DRILL_ENV, **extra}


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The study driver in a new session: its pid is the process group of everything it starts."""
    cmd = [sys.executable, str(REPO / "study" / "run_search.py"), *argv]
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def _wait_for(
    cond: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float, log: Path
) -> None:
    """Poll ``cond`` until true; fail (and kill the group) if the driver exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            pytest.fail(f"condition not reached (rc={proc.returncode}); log:\n{log.read_text()}")
        time.sleep(0.5)


def _records(study_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in Path(study_dir, "trials").glob("*.json"):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # replaced atomically, but be safe while polling
            continue
    return out


def _completed(study_dir: Path, kind: str | None = None) -> list[str]:
    return [
        tid
        for tid, r in _records(study_dir).items()
        if r.get("status") == "completed"
        and r.get("test_metrics")
        and (kind is None or r.get("kind") == kind)
    ]


# ---- the fault-injection hook itself (fast) ---------------------------------------------------
def test_fault_hook_fires_once_for_the_chosen_rank_and_epoch(tmp_path: Path) -> None:
    marker = tmp_path / "fired"
    env = dict(zip(FAULT_ENV, ("1", "2", str(marker)), strict=True))
    assert not fault_due(0, 2, env) and not fault_due(1, 1, env)  # other rank / other epoch
    assert not marker.exists()
    assert fault_due(1, 2, env) and marker.exists()
    assert not fault_due(1, 2, env)  # the restarted worker trains on
    assert not fault_due(1, 2, {})  # inert without the variables


def test_a_restored_finished_run_reports_its_last_epoch_again(tmp_path: Path) -> None:
    """A driver killed between Train's final report and Tune's: the restored Train run must say
    the final epoch again (with test/*), not end silently."""
    last = {"epoch": 2.0, "val/ndcg@10": 0.5, "test/ndcg@10": 0.4}
    progress: dict[str, Any] = {"epoch": 2, "history": [{"epoch": 1.0, "val/ndcg@10": 0.3}, last]}
    (tmp_path / PROGRESS).write_text(json.dumps({"progress": progress}))
    assert _final_report(tmp_path) == last
    progress["history"] = progress["history"][:1]  # mid-run checkpoint: fit() carries on
    (tmp_path / PROGRESS).write_text(json.dumps({"progress": progress}))
    assert _final_report(tmp_path) is None
    assert _final_report(None) is None


# ---- storage faults (unit level) --------------------------------------------------------------
def _table(n: int) -> pa.Table:
    return pa.table({"trial_id": [f"t{i}" for i in range(n)], "x": [float(i) for i in range(n)]})


def test_disk_full_while_writing_keeps_the_previous_leaderboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "leaderboard.parquet"
    write_leaderboard(_table(2), path)
    before = path.read_bytes()

    def full(table: pa.Table, where: Any, **kw: Any) -> None:
        where.write(b"PAR1 half a file")  # some bytes land before the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(LeaderboardError) as err:
        write_leaderboard(_table(3), path)
    assert str(path) in str(err.value) and "No space left" in str(err.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.parquet"]  # no temp file left
    monkeypatch.undo()
    assert pq.read_table(path).num_rows == 2


def test_unwritable_leaderboard_folder_is_an_error_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "leaderboard.parquet"
    write_leaderboard(_table(2), path)
    before = path.read_bytes()
    import tempfile

    def denied(*a: Any, dir: str = "", **kw: Any) -> Any:  # root ignores chmod: simulate EACCES
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir, ".tmp")))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(OSError) as err:
        write_leaderboard(_table(3), path)
    assert str(tmp_path) in str(err.value)
    assert path.read_bytes() == before


def test_storage_failure_mid_study_is_one_error_line_and_exit_1(
    tmp_path: Path,
    tiny_study_base: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A leaderboard write failing inside the study (disk full) stops it with a message, not a
    traceback, and leaves the study resumable (not marked done)."""
    argv = _study(
        tmp_path, tiny_study_base, "full", reference=False, param="loss.alpha", choices="[0.1, 1.0]"
    )
    from study import tune_runner

    where = tmp_path / "studies" / "full" / "leaderboard.parquet"

    def fail(*a: Any, **kw: Any) -> int:
        raise LeaderboardError(f"{where}: could not write leaderboard: [Errno 28] No space left")

    monkeypatch.setattr(tune_runner, "run_study", fail)
    assert run_search.main(argv) == run_search.EXIT_FAILED
    err = capsys.readouterr().err
    assert str(where) in err and "Traceback" not in err and "rerun" in err
    assert not (tmp_path / "studies" / "full" / "study_done.json").exists()


def test_unwritable_storage_is_refused_before_ray(
    tmp_path: Path, tiny_study_base: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _study(
        tmp_path, tiny_study_base, "ro", reference=False, param="loss.alpha", choices="[0.1, 1.0]"
    )
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")  # even root cannot create a folder under a regular file
    argv[argv.index("--storage") + 1] = str(blocker)
    assert run_search.main(argv) == run_search.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker / "ro") in err[0] and "not writable" in err[0]


# ---- drills with Ray (subprocesses) -----------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_worker_killed_mid_epoch_resumes_and_nan_trial_is_an_error_row(
    tmp_path: Path, tiny_study_base: str
) -> None:
    """Drills 1 and 4 in one study (one Ray start-up): lr 1e-3 trains, lr 1e30 turns the loss NaN at
    step 2; rank 1 of the training trial SIGKILLs itself after training epoch 2, before reporting.
    Without a restart (``max_failures = 0``) the killed trial would be an error row."""
    argv = _study(
        tmp_path,
        tiny_study_base,
        "drill",
        reference=False,
        param="optim.lr",
        choices="[0.001, 1e30]",
        max_failures=1,  # one restart for the killed worker (the NaN trial is retried once too)
    )
    marker, log = tmp_path / "killed", tmp_path / "run.log"
    kill = dict(zip(FAULT_ENV, ("1", "2", str(marker)), strict=True))
    t0 = time.perf_counter()
    rc = _finish(_start(argv, _env(**kill), log), timeout=300)
    text = log.read_text()
    assert rc == 0, text
    assert marker.exists(), "the fault hook never fired"
    rows = read_leaderboard(tmp_path / "studies" / "drill" / "leaderboard.parquet").to_pylist()
    assert len(rows) == 2 and len({r["trial_id"] for r in rows}) == 2
    (good,) = [r for r in rows if r["param.optim.lr"] == pytest.approx(1e-3)]
    (bad,) = [r for r in rows if r["param.optim.lr"] == pytest.approx(1e30)]
    assert good["status"] == "completed" and good["epochs"] == 2 and good["rank"] == 1
    assert 0.0 <= good["test/ndcg@10"] <= 1.0
    # Resumed from epoch 1's checkpoint, not from scratch: epoch 1 was reported exactly once.
    assert text.count(f" search-{good['trial_id']}  epoch 1/") == 1, text
    assert text.count(f" search-{good['trial_id']}  epoch 2/") == 1, text
    assert bad["status"] == "error" and "non-finite loss" in bad["error"], bad["error"]
    assert bad["rank"] is None
    print(f"drill worker-kill + NaN: {time.perf_counter() - t0:.0f} s")


@pytest.mark.ray
@pytest.mark.slow
def test_driver_sigkill_then_ctrl_c_then_rerun_runs_every_trial_once(
    tmp_path: Path, tiny_study_base: str
) -> None:
    """Drills 2 and 3 in one study: SIGKILL the driver's process group once the reference trial
    finished and a searched trial is running; rerun; Ctrl-C (SIGINT to the group) once a searched
    trial finished; rerun to the end. Finished trials are never re-run."""
    argv = _study(
        tmp_path, tiny_study_base, "crash", reference=True, param="loss.alpha", choices="[0.1, 1.0]"
    )
    study_dir, log = tmp_path / "studies" / "crash", tmp_path / "run.log"
    t0 = time.perf_counter()

    proc = _start(argv, _env(), log)
    _wait_for(
        lambda: (
            bool(_completed(study_dir, "reference"))
            and any(r["kind"] == "search" for r in _records(study_dir).values())
        ),
        proc,
        240,
        log,
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (ref_id,) = _completed(study_dir, "reference")
    ref_bytes = (study_dir / "trials" / f"{ref_id}.json").read_bytes()
    t_kill = time.perf_counter()

    proc = _start(argv, _env(), log)
    _wait_for(lambda: bool(_completed(study_dir, "search")), proc, 240, log)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    rc = _finish(proc, timeout=120)
    assert rc == run_search.EXIT_INTERRUPTED, log.read_text()
    assert not (study_dir / "study_done.json").exists()
    (first_id,) = _completed(study_dir, "search")
    first_bytes = (study_dir / "trials" / f"{first_id}.json").read_bytes()
    t_int = time.perf_counter()

    marks = len(log.read_text())
    rc = _finish(_start(argv, _env(), log), timeout=240)
    text = log.read_text()
    assert rc == 0, text
    assert (study_dir / "study_done.json").exists()
    assert "took over the study lock of pid" in text[:marks]  # the SIGKILLed driver's lock
    # The sampler's record of the killed run's trial is not left RUNNING.
    assert optuna_states(study_dir / "optuna.db") == {"COMPLETE": 2}, text
    rows = pq.read_table(study_dir / "leaderboard.parquet").to_pylist()
    assert sorted(r["kind"] for r in rows) == ["reference", "search", "search"]
    assert len({r["trial_id"] for r in rows}) == 3
    assert {r["status"] for r in rows} == {"completed"}
    assert sorted(r["param.loss.alpha"] for r in rows) == pytest.approx([0.0, 0.1, 1.0])
    # Finished trials were not re-run: records byte-identical, no new epoch lines for them.
    assert (study_dir / "trials" / f"{ref_id}.json").read_bytes() == ref_bytes
    assert (study_dir / "trials" / f"{first_id}.json").read_bytes() == first_bytes
    assert " reference  epoch" not in text[marks:]
    assert f" search-{first_id}  epoch" not in text[marks:]
    t_end = time.perf_counter()
    print(
        f"drill driver SIGKILL: {t_kill - t0:.0f} s to the kill; Ctrl-C run {t_int - t_kill:.0f} s;"
        f" final rerun {t_end - t_int:.0f} s"
    )


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_to_the_process_group_ends_driver_and_workers_and_the_rerun_finishes(
    tmp_path: Path, tiny_study_base: str
) -> None:
    """A SIGTERM to the driver's whole process group (as some schedulers send) stops the local
    Ray's control service (GCS) with the driver. The driver gives up on it after the 10 s of
    ``LOCAL_RAY_ENV`` (Ray's default would be 60 s), the Train worker ends with it instead of
    training on, and the rerun resumes the trial from its last checkpoint to the end."""
    epochs = 5  # Train runs up to 2 reports ahead of Tune: the kill must leave epochs to train
    argv = _study(
        tmp_path, tiny_study_base, "group", reference=False, param="loss.alpha", choices="[0.5]",
        epochs=epochs,
    )  # fmt: skip
    study_dir, log = tmp_path / "studies" / "group", tmp_path / "run.log"
    proc = _start(argv, _env(), log)
    # Once epoch 1 reached Tune.
    _wait_for(lambda: any(r["history"] for r in _records(study_dir).values()), proc, 240, log)
    done = max(map(checkpointed_epoch, (study_dir / "train").glob("train-*")), default=0)
    os.killpg(proc.pid, signal.SIGTERM)
    assert done < epochs, f"all {done} epochs were checkpointed before the kill: no drill"
    _finish(proc, timeout=45)  # Ray's own 60-s wait for its GCS would fail here
    gone = time.monotonic() + 20
    while _session_processes(proc.pid) and time.monotonic() < gone:
        time.sleep(0.5)
    assert not _session_processes(proc.pid), log.read_text()

    marks = len(log.read_text())
    rc = _finish(_start(argv, _env(), log), timeout=240)
    text = log.read_text()
    assert rc == 0, text
    assert f"resuming {study_dir / 'search'}" in text[marks:]
    (record,) = _records(study_dir).values()
    assert record["status"] == "completed" and record["test_metrics"], text
    assert [int(row["epoch"]) for row in record["history"]] == list(range(1, epochs + 1))
    assert optuna_states(study_dir / "optuna.db") == {"COMPLETE": 1}, text


def _session_processes(sid: int) -> list[str]:
    """``pid command`` of every process still in session ``sid`` (the killed driver's)."""
    out = subprocess.run(["ps", "-s", str(sid), "-o", "pid=,args="], capture_output=True, text=True)
    return out.stdout.split("\n")[:-1]


class _SignalledTuner:
    """A tuner whose ``fit()`` installs Ray Tune's own SIGINT handler, as ``Tuner.fit`` does,
    then sends itself ``signals`` and waits until Tune's stop event is set."""

    def __init__(self, *signals: signal.Signals) -> None:
        self.signals = signals
        self.stopped = False

    def fit(self) -> None:
        from ray.tune.tune import _setup_signal_catching

        event = _setup_signal_catching()
        for signum in self.signals:
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # Python runs the handler at the next bytecode of the main thread
        self.stopped = event.wait(timeout=5) if self.signals else event.is_set()


def test_sigterm_stops_the_search_as_ctrl_c_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (``kill``, ``timeout``, a scheduler) reaches Tune's graceful stop, which saves the
    experiment state, and the study then says it was interrupted; the handlers are restored."""
    from study.tune_runner import _fit_interrupted

    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    tuner = _SignalledTuner(signal.SIGTERM)
    assert _fit_interrupted(tuner)  # type: ignore[arg-type]
    assert tuner.stopped
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before

    quiet = _SignalledTuner()
    assert not _fit_interrupted(quiet)  # type: ignore[arg-type]
    assert not quiet.stopped


def test_a_second_sigterm_stops_at_once_as_a_second_ctrl_c_does() -> None:
    from study.tune_runner import _fit_interrupted

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        _fit_interrupted(_SignalledTuner(signal.SIGTERM, signal.SIGTERM))  # type: ignore[arg-type]
    assert signal.getsignal(signal.SIGTERM) == before


def test_optuna_trials_left_running_by_a_killed_driver_are_failed_at_the_end(
    tmp_path: Path,
) -> None:
    """The end of a study leaves no Optuna trial RUNNING, whichever moment a killed driver hit."""
    import optuna

    from study.tune_runner import fail_orphaned_optuna_trials

    db = tmp_path / "optuna.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    study.tell(study.ask(), 1.0)
    study.ask()  # created by the searcher, never told: its driver was killed
    assert optuna_states(db) == {"COMPLETE": 1, "RUNNING": 1}
    assert fail_orphaned_optuna_trials(db, "s") == [1]
    assert optuna_states(db) == {"COMPLETE": 1, "FAIL": 1}
    assert fail_orphaned_optuna_trials(db, "s") == []
    assert fail_orphaned_optuna_trials(tmp_path / "none.db", "s") == []
    assert fail_orphaned_optuna_trials(db, "other") == []
