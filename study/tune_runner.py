"""The Ray side of ``run_search.py``: connect, preflight, run the reference and search Tuners, report.

Two Tune experiments live in one study folder: ``reference/`` (the ``alpha = beta = 0`` baseline, one
trial, no scheduler, not told to the sampler: METHOD.md §8) and ``search/`` (OptunaSearch + ASHA).
Each is restored with ``Tuner.restore(resume_errored=True)`` when its state exists, so rerunning the
command after a crash or Ctrl-C continues the study; ``study_done.json`` marks a finished study.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from study.callbacks import StudyContext, StudyRecorder, rebuild_leaderboard
from study.driver import TrialPlan, run_trial
from study.leaderboard import read_leaderboard
from study.search_space import SearchSpec, StudySettings, make_sampler, to_tune_param_space
from vlm2rec.config import to_dict
from vlm2rec.data.prepare import ensure_dataset

__all__ = ["LOCAL_RAY_ENV", "make_scheduler", "run_study"]

REPO = Path(__file__).resolve().parents[1]
DONE = "study_done.json"
#: Ray Train settings for a Ray this process starts on the local machine (RAY.md): no spot
#: preemption to watch for and no Prometheus to scrape Train's metrics, and the controller polls
#: its workers every 0.5 s instead of 2 s, so it notices each report and the end of a run sooner.
#: RAY.md: ~3 s less per Train run; bench/overhead.py measures them with the lazy model import in
#: study/worker.py. A cluster keeps Ray's defaults.
LOCAL_RAY_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def _git_sha() -> str | None:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "ray", "optuna")}


def _connect(address: str) -> bool:
    """Start a local Ray (dashboard on 127.0.0.1: Train needs it to free stopped trials' workers,
    RAY.md) or join a cluster, unless this process is already connected; True if we started it."""
    if ray.is_initialized():
        return False
    if address == "local":
        for key, value in LOCAL_RAY_ENV.items():  # inherited by every Ray process started here
            os.environ.setdefault(key, value)
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1")
    else:
        ray.init(address=address)
    return True


def _tuner(
    kind: str, spec: SearchSpec, study_dir: Path, trainable: Any, ctx: StudyContext, concurrent: int
) -> tune.Tuner:
    path = study_dir / kind
    if tune.Tuner.can_restore(str(path)):
        print(f"resuming {path}", flush=True)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    s = spec.study
    if kind == "reference":
        param_space: dict[str, Any] = spec.reference_params()
        tune_config = tune.TuneConfig(
            num_samples=1, scheduler=FIFOScheduler(), metric=s.metric, mode=s.mode
        )
    else:
        param_space = to_tune_param_space(spec)
        searcher = OptunaSearch(
            metric=s.metric,
            mode=s.mode,
            sampler=make_sampler(spec),
            study_name=ctx.study,
            storage=_optuna_storage(study_dir),
        )
        scheduler = make_scheduler(s)
        tune_config = tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=s.num_samples,
            max_concurrent_trials=concurrent,
            time_budget_s=s.time_budget_s or None,
        )
    run_config = tune.RunConfig(
        name=kind,
        storage_path=str(study_dir),
        callbacks=[StudyRecorder(ctx, kind)],
        failure_config=tune.FailureConfig(max_failures=0),
        verbose=0,  # StudyRecorder prints one line per epoch instead of the full result dict
    )
    return tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config, run_config=run_config
    )


def make_scheduler(s: StudySettings) -> TrialScheduler:
    """ASHA on the reported ``epoch`` with the study's rungs, or no early stopping (FIFO)."""
    if s.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        max_t=s.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def _optuna_storage(study_dir: Path) -> Any:
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")


def _fit_interrupted(tuner: tune.Tuner) -> bool:
    """Run ``tuner.fit()``; True if Ctrl-C (SIGINT) stopped it.

    On the first SIGINT Tune saves its state, stops the trials and *returns normally*; the only
    trace is that its handler puts back the handler it found. So we install a marker handler
    first: still in place after ``fit()`` means Tune's handler fired. (Without Tune's handler,
    ``TUNE_DISABLE_SIGINT_HANDLER=1``, the marker itself raises ``KeyboardInterrupt``.) Signal
    handlers exist in the main thread only; elsewhere Tune does not catch SIGINT either.
    """
    if threading.current_thread() is not threading.main_thread():
        tuner.fit()
        return False

    def marker(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, marker)
    try:
        tuner.fit()
        return signal.getsignal(signal.SIGINT) is marker and not int(
            os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_summary(study_dir: Path, metric: str, top: int = 10) -> None:
    frame = read_leaderboard(study_dir / "leaderboard.parquet").to_pandas()
    cols = ["rank", "kind", "status", metric, "best_epoch", "epochs", "wall_s"]
    cols += [c for c in frame.columns if c.startswith("param.")] + [
        f"test/{metric.split('/', 1)[1]}"
    ]
    print(
        frame[[c for c in cols if c in frame.columns]].head(top).to_string(index=False), flush=True
    )
    print(f"\nleaderboard:  {study_dir / 'leaderboard.parquet'}")
    print(f"tensorboard:  tensorboard --logdir {study_dir / 'tensorboard'}")
    print(f"optuna:       optuna-dashboard sqlite:///{study_dir / 'optuna.db'}")


def run_study(
    spec: SearchSpec, name: str, study_dir: Path, train_storage: str, args: argparse.Namespace
) -> int:
    """Run (or resume) the study; returns the process exit code."""
    from study.run_search import DRIVER_CPUS, EXIT_INTERRUPTED, local_resources, preflight

    if (study_dir / DONE).exists():
        print(f"study {name} is finished ({study_dir / DONE}); its leaderboard:")
        _print_summary(study_dir, spec.study.metric)
        return 0
    if args.address == "local" and not ray.is_initialized() and not args.skip_preflight:
        preflight(spec, local_resources())  # refuse before paying for a Ray start-up
    base = spec.base_config()
    dataset = ensure_dataset(base.data)  # build the synthetic benchmark once, on the driver
    # With Tune's file loggers off (our records replace them) its result grid warns once per trial
    # that result.json is missing: true and expected.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    started = _connect(args.address)
    cluster = {k: float(v) for k, v in ray.cluster_resources().items()}
    print(
        "cluster:", {k: v for k, v in cluster.items() if k in ("CPU", "GPU", "driver")}, flush=True
    )
    fits = 1 if args.skip_preflight else preflight(spec, cluster)
    if args.dry_run:
        print(f"preflight ok: {fits} trial(s) fit at once")
        return 0
    s = spec.study
    concurrent = s.max_concurrent_trials or fits
    study_dir.mkdir(parents=True, exist_ok=True)
    ctx = StudyContext(
        study=name,
        study_dir=str(study_dir),
        metric=s.metric,
        mode=s.mode,
        param_kinds=dict(spec.param_kinds()),
        base=to_dict(base),
        gpus_per_trial=s.workers_per_trial * s.gpus_per_worker,
        data_fingerprint=dataset.fingerprint,
        git_sha=_git_sha(),
        versions=_versions(),
    )
    plan = TrialPlan(
        base=to_dict(base),
        train_storage=train_storage,
        workers_per_trial=s.workers_per_trial,
        gpus_per_worker=s.gpus_per_worker,
        cpus_per_worker=s.cpus_per_worker,
        max_failures=s.max_failures,
    )
    # On a cluster whose head offers a "driver" resource (cluster.yaml), trial drivers stay there.
    driver = {"CPU": DRIVER_CPUS, **({"driver": 1} if "driver" in cluster else {})}
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), driver)
    start = time.perf_counter()
    for kind in (["reference"] if s.reference else []) + ["search"]:
        if _fit_interrupted(_tuner(kind, spec, study_dir, trainable, ctx, concurrent)):
            rebuild_leaderboard(ctx)  # what finished so far; the study is not marked done
            print(f"\ninterrupted: rerun the same command to resume study {name}", flush=True)
            if started and args.address == "local":
                ray.shutdown()
            return EXIT_INTERRUPTED
    rebuild_leaderboard(ctx)
    wall = time.perf_counter() - start
    (study_dir / DONE).write_text(json.dumps({"wall_s": wall, "finished": time.time()}) + "\n")
    print(f"\nstudy {name} finished in {wall:.0f} s")
    _print_summary(study_dir, s.metric)
    from study.report import try_write_report  # matplotlib only when a study ends

    try_write_report(study_dir)  # a plotting failure is a printed warning, never a failed study
    if started and args.address == "local":
        ray.shutdown()  # stop our local instance before exit, not under the workers' feet
    return 0
