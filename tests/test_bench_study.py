"""``bench/overhead.py``, ``bench/actor_start.py``, ``bench/trial_cpu.py``, ``bench/asha_reuse.py``,
``bench/trial_timeline.py`` and ``bench/hpo.py``:
their analysis is right and a tiny run of each (of trial_cpu.py: its sampler) works.

The scripts live in ``bench/`` (a folder of scripts, not a package); ``bench_scripts.load`` imports
them from their files.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import load

from study.search_space import load_search_spec

overhead = load("overhead")
actor_start = load("actor_start")
trial_cpu = load("trial_cpu")
asha_reuse = load("asha_reuse")
trial_timeline = load("trial_timeline")
hpo = load("hpo")


# ----------------------------------------------------------------------------- overhead.py


@pytest.mark.parametrize("size", list(overhead.SIZES))
def test_overhead_space_is_a_valid_grid_of_k_trials(tmp_path: Path, size: str) -> None:
    space = tmp_path / "s.toml"
    space.write_text(overhead.space_toml(size, 3, tmp_path / "data"))
    spec = load_search_spec(space)  # the study's own validation
    assert spec.study.sampler == "grid" and spec.study.num_samples == spec.grid_size() == 3
    assert spec.study.scheduler == "none" and not spec.study.reference
    assert spec.study.workers_per_trial == 1 and spec.study.cpus_per_worker == 1.0
    points = overhead.grid_points(spec)
    assert points == [{"loss.alpha": a} for a in overhead.ALPHAS[:3]]
    cfg = spec.run_config(points[0])
    assert cfg.train.epochs == overhead.SIZES[size]["train.epochs"]
    assert cfg.data.synthetic.users == overhead.SIZES[size]["data.synthetic.users"]


def test_overhead_summarise_splits_the_extra_time() -> None:
    plain = [
        {"params": {"loss.alpha": 0.25}, "fit_s": 10.0, "epoch_s": 9.0, "val/ndcg@10": 0.5},
        {"params": {"loss.alpha": 0.5}, "fit_s": 12.0, "epoch_s": 11.0, "val/ndcg@10": 0.6},
    ]
    study = {
        "wall_s": 60.0,
        "tune_s": 45.0,
        "trials": [
            {"params": {"loss.alpha": 0.5}, "trial_s": 20.0, "epoch_s": 11.5, "val/ndcg@10": 0.6},
            {
                "params": {"loss.alpha": 0.25},
                "trial_s": 16.0,
                "epoch_s": 9.5,
                "val/ndcg@10": 0.5 + 1e-9,
            },
        ],
    }
    got = overhead.summarise(2, study, plain_wall=30.0, plain=plain)
    assert got["ratio"] == pytest.approx(2.0)
    assert got["fixed_cost_s_per_trial"] == pytest.approx(15.0)
    # per trial: Tune phase 45 s - 22 s of plain fits; once: 15 s outside Tune - 8 s of plain's own
    assert got["per_trial_s"] == pytest.approx(11.5) and got["per_study_s"] == pytest.approx(7.0)
    assert got["per_trial_s"] + got["per_study_s"] / 2 == pytest.approx(15.0)
    assert got["split_s"] == pytest.approx(
        {
            "outside_tune": 15.0,
            "between_trials": 9.0,
            "inside_trials_beyond_fit": 14.0,
            "of_which_slower_epochs": 1.0,
        }
    )
    older = {**study, "trials": [{**t, "epoch_s": None} for t in study["trials"]]}
    assert overhead.summarise(2, older, 30.0, plain)["split_s"]["of_which_slower_epochs"] is None
    assert got["max_abs_metric_diff"] == pytest.approx(1e-9)  # matched by alpha, not by order


def test_floor_phases_split_a_fit_at_its_function_marks() -> None:
    marks = {"process_start": 107.0, "function_start": 111.5}
    assert overhead.floor_phases(100.0, marks, 113.0) == {
        "to_worker_process": 7.0,
        "worker_start": 4.5,
        "to_end": 1.5,
    }


@pytest.mark.slow
@pytest.mark.ray
def test_overhead_smoke_study_and_plain_train_the_same_model(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    argv = ["--sizes", "5s", "--trials", "1", "--work", str(tmp_path / "w"), "--out", str(out)]
    assert overhead.main(argv) == out
    doc = json.loads(out.read_text())
    (row,) = doc["results"]
    study = row["study"]
    assert doc["headline"]["value"] == pytest.approx(study["ratio"]) and study["ratio"] > 1
    assert study["max_abs_metric_diff"] == 0.0  # the Ray Train worker ran the same fit
    assert row["plain_fit_s_per_trial"] > 0 and "before" not in row
    assert study["split_s"]["of_which_slower_epochs"] is not None  # read from the trial records
    assert row["plain"][0]["epoch_s"] > 0
    (floor,) = doc["floor"]["fit_s"]  # one bare TorchTrainer.fit() per trial
    assert 0 < doc["floor"]["report_s"]["metrics_only"] < 0.5
    assert 0 < floor < study["wall_s"]
    phases = doc["floor"]["phases_s"][0]  # split at the marks its function took
    assert set(phases) == {"to_worker_process", "worker_start", "to_end"}
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) == pytest.approx(
        floor, abs=0.2
    )
    assert doc["machine"]["cpu"]


# ----------------------------------------------------------------------------- hpo.py


def _reports(values: list[float], trials: list[str]) -> list[dict]:
    epochs: dict[str, int] = {}
    out = []
    for value, trial in zip(values, trials, strict=True):
        epochs[trial] = epochs.get(trial, 0) + 1
        out.append({"trial": trial, "epoch": epochs[trial], "value": value, "params": {}})
    return out


def test_best_so_far_is_a_running_max_carried_to_the_budget() -> None:
    reports = _reports([0.2, 0.5, 0.4, 0.7], ["a", "a", "b", "b"])
    assert hpo.best_so_far(reports, 6) == [0.2, 0.5, 0.5, 0.7, 0.7, 0.7]
    assert hpo.best_so_far(reports, 2) == [0.2, 0.5]  # reports past the budget don't count


def test_budget_to_reach() -> None:
    curve = [0.1, 0.3, 0.3, 0.6]
    assert hpo.budget_to_reach(curve, 0.3) == 0.5
    assert hpo.budget_to_reach(curve, 0.6) == 1.0
    assert hpo.budget_to_reach(curve, 0.61) == math.inf


def test_trial_counts_and_summary() -> None:
    # ASHA-like: trial a runs 3 epochs (max_t), b is stopped after 1, c after 2
    a = _reports([0.3, 0.4, 0.5, 0.1, 0.2, 0.6], ["a", "a", "a", "b", "c", "c"])
    assert hpo.trial_counts(a, max_t=3) == {"trials": 3, "full_trials": 1}
    b = _reports([0.2, 0.3, 0.35, 0.4, 0.45, 0.5], ["x"] * 3 + ["y"] * 3)
    records = [
        {"method": "tpe_asha", "seed": 0, "reports": a},
        {"method": "random_asha", "seed": 0, "reports": b},
    ]
    summary = hpo.summarise(records, budget=6, max_t=3)
    assert summary["tpe_asha"]["final_best_mean"] == 0.6
    assert summary["random_asha"]["final_best_mean"] == 0.5
    # tpe_asha's curve 0.3 0.4 0.5 ... reaches 0.5 after 3 of 6 epochs; random never reaches 0.6
    assert summary["tpe_asha"]["budget_fraction_to_reach"] == {"random_asha": 0.5}
    assert summary["random_asha"]["budget_fraction_to_reach"] == {"tpe_asha": math.inf}
    assert (
        summary["tpe_asha"]["trials_mean"] == 3 and summary["random_asha"]["full_trials_mean"] == 2
    )


def test_reused_runs_only_where_nothing_that_decides_them_changed(tmp_path: Path) -> None:
    asha = {"max_t": 10, "grace_period": 4, "reduction_factor": 2.0}
    setting = {"fixed": {"seed": 0}, "budget_epochs": 40, "seeds": [0, 1], "asha": asha}
    setting["startup_trials"] = 3
    methods = {m: hpo._method_setting(m) for m in hpo.DEFAULT_METHODS}
    runs = [{"method": m, "seed": s, "reports": []} for m in hpo.DEFAULT_METHODS for s in (0, 1)]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"setting": {**setting, "methods": methods}, "runs": runs}))
    got = hpo.reused_runs(old, setting, ["tpe_asha"])
    assert sorted((r["method"], r["seed"]) for r in got) == [
        ("random", 0), ("random", 1), ("random_asha", 0), ("random_asha", 1)
    ]  # fmt: skip
    later = {**setting, "asha": {**asha, "grace_period": 6}}  # ASHA changed: only `random` holds
    assert {r["method"] for r in hpo.reused_runs(old, later, ["tpe_asha", "random_asha"])} == {
        "random"
    }
    with pytest.raises(SystemExit, match="random_asha ran with ASHA"):
        hpo.reused_runs(old, later, ["tpe_asha"])
    with pytest.raises(SystemExit, match=r"setting\.budget_epochs is 40"):
        hpo.reused_runs(old, {**setting, "budget_epochs": 80}, ["tpe_asha"])
    fewer = {**setting, "startup_trials": 1}  # random samplers have no startup: both still hold
    assert {r["method"] for r in hpo.reused_runs(old, fewer, ["tpe_asha"])} == {
        "random", "random_asha"
    }  # fmt: skip
    with pytest.raises(SystemExit, match="tpe_asha ran with 3 startup trials, this run has 1"):
        hpo.reused_runs(old, fewer, ["random"])


@pytest.mark.parametrize(
    ("method", "state"), [("tpe_asha", "PRUNED"), ("tpe_asha_complete", "COMPLETE")]
)
def test_an_asha_stopped_trial_reaches_optuna_as_the_method_says(method: str, state: str) -> None:
    """A trial that reports epochs 1 and 2 and is stopped there (no ``test/*`` in its last
    report), driven as Tune drives the searcher."""
    from ray import tune

    spec = load_search_spec(hpo.DEFAULT_SPACE)
    searcher = hpo.searcher(hpo.method_spec(spec, method, seed=0), method)
    assert searcher.set_search_properties(None, None, {"loss.alpha": tune.uniform(0.0, 1.0)})
    assert searcher.suggest("t") is not None
    metric = spec.study.metric
    searcher.on_trial_result("t", {"epoch": 1, "training_iteration": 1, metric: 0.2})
    searcher.on_trial_complete("t", {"epoch": 2, "training_iteration": 2, metric: 0.25})
    (trial,) = searcher._ot_study.get_trials()
    assert trial.state.name == state and trial.value == 0.25
    assert hpo._method_setting(method).get("stopped_trials", "pruned") == state.lower()


def test_the_wide_tpe_models_a_quarter_of_the_trials_as_good() -> None:
    from optuna.samplers._tpe.sampler import default_gamma

    spec = hpo.method_spec(load_search_spec(hpo.DEFAULT_SPACE), "tpe_asha_wide", seed=0)
    with pytest.warns(FutureWarning):  # Optuna deprecates `gamma` (4.9); it still works in 5
        sampler = hpo.searcher(spec, "tpe_asha_wide")._sampler
    assert [sampler._gamma(n) for n in (3, 4, 7, 8, 9, 200)] == [1, 1, 2, 2, 3, 25]
    assert sampler._n_startup_trials == spec.study.startup_trials
    # Optuna's own form at its own fraction: a single good trial below 11
    assert [hpo.good_group(0.1, n) for n in (9, 11, 300)] == [
        default_gamma(n) for n in (9, 11, 300)
    ]
    assert default_gamma(10) == 1


@pytest.mark.slow
@pytest.mark.ray
def test_hpo_smoke_spends_the_budget_and_pairs_random_runs(tmp_path: Path) -> None:
    out, budget = tmp_path / "h.json", 4
    argv = [
        "--budget",
        str(budget),
        "--seeds",
        "0",
        "--users",
        "40",
        "--set",
        "train.batch_size=16",
    ]
    argv += ["--data-root", str(tmp_path / "data"), "--out", str(out)]

    def run_hpo() -> None:  # its own process: the script starts (and stops) its own Ray
        subprocess.run([sys.executable, hpo.__file__, *argv], check=True)

    run_hpo()
    doc = json.loads(out.read_text())
    runs = {r["method"]: r for r in doc["runs"]}
    assert set(runs) == set(hpo.DEFAULT_METHODS)
    for run in runs.values():
        assert len(run["reports"]) == budget
        curve = hpo.best_so_far(run["reports"], budget)
        assert curve == sorted(curve)
    # same sampler seed: random with and without ASHA draw the same first configuration
    first = {m: runs[m]["reports"][0]["params"] for m in ("random", "random_asha")}
    assert first["random"] == first["random_asha"]
    assert doc["headline"]["unit"] == "fraction"
    summary = doc["summary"]
    assert (
        summary["tpe_asha"]["budget_fraction_to_reach"]["random_asha"] == doc["headline"]["value"]
    )
    assert doc["runs_left"] == [] and {r["git_sha"] for r in doc["runs"]} == {hpo.git_sha()}
    # the same command again takes every run from its result file and runs none
    run_hpo()
    again = json.loads(out.read_text())
    assert again["kept_runs"] == len(hpo.DEFAULT_METHODS) and again["runs"] == doc["runs"]
    assert again["summary"] == doc["summary"]
    # a run whose key is not there (another machine, budget, ...) is run again
    doc["runs"][0]["key"] = "elsewhere"
    out.write_text(json.dumps(doc))
    run_hpo()
    assert json.loads(out.read_text())["kept_runs"] == len(hpo.DEFAULT_METHODS) - 1


def test_an_unfinished_result_file_lists_the_runs_left_and_no_summary(tmp_path: Path) -> None:
    setting = {"asha": {"max_t": 10}, "budget_epochs": 2}
    run = {"method": "tpe_asha", "seed": 0, "key": "k", "reports": [{"value": 0.3}] * 2}
    out = tmp_path / "h.json"
    path, summary = hpo._write(out, setting, [run], ["random_asha-s0"], {"wall_s": 1.0})
    doc = json.loads(path.read_text())
    assert summary is None and doc["summary"] is None and doc["headline"]["value"] is None
    assert doc["runs_left"] == ["random_asha-s0"] and hpo.earlier_runs(path) == {"k": run}
    assert hpo.earlier_runs(tmp_path / "none.json") == {}


def test_a_kept_run_is_found_only_by_what_decides_it(tmp_path: Path) -> None:
    here = hpo.numerics()
    assert {"cpu", "torch", "python"} <= set(here) and "load_average_1_5_15" not in here
    spec = hpo.bench_spec(hpo._parse(["--data-root", str(tmp_path / "a")]))
    key = hpo.run_key(spec, "tpe_asha", 0, 40, here)
    elsewhere = hpo.bench_spec(hpo._parse(["--data-root", str(tmp_path / "b")]))
    assert hpo.run_key(elsewhere, "tpe_asha", 0, 40, here) == key  # another checkout, the same run
    epochs = hpo.bench_spec(hpo._parse(["--set", "train.epochs=8", "--data-root", str(tmp_path)]))
    grace = hpo.bench_spec(hpo._parse(["--grace-period", "6", "--data-root", str(tmp_path)]))
    others = [
        hpo.run_key(spec, "tpe_asha", 1, 40, here),
        hpo.run_key(spec, "tpe_asha", 0, 80, here),
        hpo.run_key(spec, "tpe_asha_wide", 0, 40, here),  # the same sampler and scheduler
        hpo.run_key(spec, "tpe_asha_complete", 0, 40, here),
        hpo.run_key(epochs, "tpe_asha", 0, 40, here),
        hpo.run_key(grace, "tpe_asha", 0, 40, here),
        hpo.run_key(spec, "tpe_asha", 0, 40, {**here, "cpu": "another CPU"}),
    ]
    assert len({key, *others}) == len(others) + 1


# ----------------------------------------------------------------------------- actor_start.py


def test_actor_start_summarise_splits_prestarted_from_new_processes() -> None:
    rows = [
        {"start_s": 0.2, "prestarted": True, "torch": False},
        {"start_s": 0.5, "prestarted": False, "torch": True},
        {"start_s": 0.7, "prestarted": False, "torch": True},
    ]
    s = actor_start.summarise(rows)
    assert s["prestarted"] == {"n": 1, "mean_s": 0.2, "std_s": 0.0}
    assert s["new_process"]["n"] == 2 and s["new_process"]["mean_s"] == pytest.approx(0.6)
    assert s["torch_already_imported"] == 2


@pytest.mark.slow
@pytest.mark.ray
def test_actor_start_hook_actors_never_land_in_prestarted_workers(tmp_path: Path) -> None:
    """What the README says of the setup hook: every actor of a job with one gets a new process,
    which ran the hook before the actor's first call."""
    out = tmp_path / "hook.json"
    argv = ["--variant", "hook", "--actors", "2", "--child-out", str(out)]
    subprocess.run([sys.executable, actor_start.__file__, *argv], check=True)
    rows = json.loads(out.read_text())["actors"]
    assert [(r["prestarted"], r["torch"]) for r in rows] == [(False, True)] * 2


# ----------------------------------------------------------------------------- trial_cpu.py


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("ray::TrainController.run", "ray::TrainController"),
        ("ray::_QueueActor.put", "ray::_QueueActor"),
        ("ray::IDLE", "ray::IDLE"),
        ("/venv/bin/python /repo/study/run_search.py --space s.toml", "run_search.py"),
        ("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x=1", "raylet"),
        (
            "ray-dashboard-NodeHead-0 (/venv/bin/python -B -c from multiprocessing...)",
            "dashboard modules",
        ),
        ("/venv/bin/python -u /venv/lib/ray/_private/log_monitor.py --s", "log_monitor"),
        ("/usr/bin/git status", "other"),
    ],
)
def test_trial_cpu_names_each_process_by_its_role(title: str, expected: str) -> None:
    assert trial_cpu.role(title) == expected


def test_trial_cpu_sums_roles_and_the_extra_per_trial() -> None:
    seen = {
        1: ("ray::TrainController.run", 3.0),
        2: ("ray::TrainController.run", 4.0),
        3: ("x", 1.0),
    }
    roles = trial_cpu.by_role(seen)
    assert list(roles) == ["ray::TrainController", "other"]
    assert roles["ray::TrainController"] == {"cpu_s": 7.0, "processes": 2}
    s = trial_cpu.summarise(2, 2, {"wall_s": 10.0, "cpu_s": 10.0}, {"wall_s": 30.0, "cpu_s": 36.0})
    assert s == {"cores_busy": 0.6, "extra_cpu_s_per_trial": 13.0, "extra_wall_s_per_trial": 10.0}


def test_trial_cpu_sampler_sees_a_process_that_started_during_the_run() -> None:
    """A child that burns 0.6 s of CPU and ends: the sampler keeps its title and CPU time."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    with trial_cpu.CpuSampler() as sampler:
        subprocess.run([sys.executable, "-c", burn, "cpu-burner"], check=True)
    mine = [cpu for title, cpu in sampler.seen.values() if title.endswith("cpu-burner")]
    assert len(mine) == 1 and 0.6 - trial_cpu.SAMPLE_S - 0.05 <= mine[0] <= 1.0
    assert sampler.own_cpu_s > 0


# ----------------------------------------------------------------------------- asha_reuse.py


def test_asha_reuse_space_is_a_one_at_a_time_asha_search(tmp_path: Path) -> None:
    space = tmp_path / "s.toml"
    space.write_text(asha_reuse.space_toml(5, tmp_path / "data"))
    spec = load_search_spec(space)  # the study's own validation
    s = spec.study
    assert (s.sampler, s.scheduler, s.num_samples, s.grace_period) == ("random", "asha", 5, 1)
    assert s.max_concurrent_trials == 1 and s.max_t == asha_reuse.EPOCHS and not s.reference
    assert [p.path for p in spec.params] == ["loss.alpha"]


def test_asha_reuse_counts_the_trial_processes_of_the_session_it_names(tmp_path: Path) -> None:
    logs = tmp_path / "session_2026-12-03_13-09-45_001101_3145" / "logs"
    logs.mkdir(parents=True)
    for i, actor in enumerate(["ImplicitFunc", "TrainController", "ImplicitFunc"]):
        (logs / f"worker-{i}.out").write_text(f":job_id:01000000\n:actor_name:{actor}\n")
    header = f"ray's output:   /s/ray.log (driver), {logs} (workers); --verbose prints it here"
    assert asha_reuse.trial_processes(f"ray:  local\n{header}\n") == 2
    assert asha_reuse.trial_processes("no header") is None


def _asha_run(wall: float, status: str = "stopped_early") -> dict:
    trial = {"status": status, "epochs": 1, "val/ndcg@10": 0.03, "param.loss.alpha": 0.7}
    return {"wall_s": wall, "tune_s": wall - 10, "trial_processes": 1, "trials": [trial]}


def test_asha_reuse_summary_and_the_check_that_both_ran_the_same_trials() -> None:
    runs = {"before": [_asha_run(100.0), _asha_run(110.0)], "now": [_asha_run(84.0)]}
    s = asha_reuse.summarise(4, runs)
    assert s["before"]["wall_s"] == (105.0, pytest.approx(7.0711, abs=1e-4))
    assert s["ratio"] == 0.8 and s["saved_s_per_trial"] == 5.25
    assert asha_reuse.same_trials(runs) == 0.0
    runs["now"].append(_asha_run(90.0, status="completed"))
    with pytest.raises(RuntimeError, match="the runs differ"):
        asha_reuse.same_trials(runs)


# ----------------------------------------------------------------------------- trial_timeline.py


def _event(method: str, worker: str, start_s: float, dur_s: float) -> dict:
    """One completed call in ``ray.timeline``'s format (microseconds)."""
    return {
        "ph": "X",
        "cat": f"task::{method}",
        "tid": worker,
        "ts": start_s * 1e6,
        "dur": dur_s * 1e6,
    }


def test_trial_timeline_splits_each_train_run_at_its_own_calls() -> None:
    events = [{"ph": "i", "cat": "task::TrainController.run", "ts": 0.0}]  # not a completed call
    for t0, controller, put in ((0.0, "worker:c1", 0.5), (20.0, "worker:c2", 0.01)):
        events += [
            _event("TrainController.__init__", controller, t0, 1.5),
            _event("TrainController.run", controller, t0 + 2, 10.0),
            _event("RayTrainWorker.init_train_context", "worker:w", t0 + 4.5, 1.25),
            _event("_QueueActor.put", "worker:q", t0 + 9, put),
            _event("_QueueActor.put", "worker:q", t0 + 11, 0.0),  # the next report's
        ]
    events.reverse()  # the timeline's order is not time order
    first, second = trial_timeline.phases(events)
    assert first == {
        "controller_init_s": 1.5, "to_worker_s": 2.5, "worker_init_s": 1.25,
        "first_put_s": 0.5, "run_s": 10.0,
    }  # fmt: skip
    assert second["first_put_s"] == pytest.approx(0.01) and second["to_worker_s"] == 2.5
    runs = {
        code: [{"wall_s": wall, "runs": [first, {**second, "run_s": run_s}]}]
        for code, wall, run_s in (("before", 40.0, 10.0), ("now", 38.0, 7.0))
    }
    s = trial_timeline.summarise(runs)
    assert s["now"]["run_s"] == (8.5, pytest.approx(2.1213, abs=1e-4))
    assert s["run_s_ratio"] == 8.5 / 10.0 and s["before"]["wall_s"] == (40.0, 0.0)


def test_trial_timeline_leaves_out_a_put_the_timeline_lacks() -> None:
    """The last trial's put may be missing (its queue dies with the trial process): that run has
    no ``first_put_s``, and the mean is over the runs that have one."""
    events = [
        _event("TrainController.__init__", "worker:c", 0.0, 1.5),
        _event("TrainController.run", "worker:c", 2.0, 10.0),
        _event("RayTrainWorker.init_train_context", "worker:w", 4.5, 1.25),
    ]
    (run,) = trial_timeline.phases(events)
    assert run["first_put_s"] is None and run["run_s"] == 10.0
    studies = [{"wall_s": 40.0, "runs": [run, {**run, "first_put_s": 0.5}]}]
    s = trial_timeline.summarise({"before": studies, "now": studies})
    assert s["now"]["first_put_s"] == (0.5, 0.0) and s["now"]["run_s"] == (10.0, 0.0)


# ----------------------------------------------------------------------------- figures.py


def test_figures_draw_from_the_committed_results(tmp_path: Path) -> None:
    figures = load("figures")
    written = figures.main(["--out", str(tmp_path)])
    assert tmp_path / "collapse.png" in written
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
