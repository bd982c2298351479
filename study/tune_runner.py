"""The Ray side of a study: connect, run the reference and search Tuners, write the report.

``run_search.py`` hands over a checked :class:`~study.plan.StudyPlan` that fits the cluster. Two
Tune experiments live in one study folder: ``reference/`` (the ``alpha = beta = 0`` baseline, one
trial, no scheduler, not told to the sampler: docs/METHOD.md §8) and ``search/`` (Optuna +
ASHA). Each is restored with ``Tuner.restore(resume_errored=True)`` when its state exists, so
rerunning the command after a crash or Ctrl-C continues the study; ``study_done.json`` marks a
finished study. The Ray behaviour this relies on is in docs/ARCHITECTURE.md ("Ray traps").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from study.callbacks import (
    StudyContext,
    StudyRecorder,
    follow,
    hparams_order,
    rebuild_leaderboard,
)
from study.console import quiet
from study.driver import TrialPlan, run_trial
from study.leaderboard import summary
from study.plan import DRIVER_CPUS, EXIT_INTERRUPTED, PreflightError, StudyPlan
from study.progress import StudyProgress
from study.records import VERSION_PACKAGES, Kind, StudyFolder, TrialRecord, read_records
from study.search_space import SearchSpec, StudySettings, make_sampler, to_tune_param_space
from study.searcher import StudySearcher
from vlm2rec.atomic import atomic_write_text
from vlm2rec.config import to_dict
from vlm2rec.data.prepare import ensure_dataset
from vlm2rec.data.schema import PreparedDataset
from vlm2rec.metric_names import eval_metric_names

__all__ = [
    "AUTH_MODE",
    "DEFAULT_TOKEN",
    "LOCAL_RAY_ENV",
    "STUDY_ENV",
    "connect",
    "ensure_private_token",
    "fail_orphaned_optuna_trials",
    "make_scheduler",
    "run_studies",
    "run_study",
    "start_local_ray",
    "tune_setup",
    "use_auth_mode",
]

REPO = Path(__file__).resolve().parents[1]
#: Environment of every study driver: Tune's automatic CSV/JSON/TBX loggers off (they duplicate
#: the study's own records and rename tags, '@' -> '_'), and no usage statistics sent.
STUDY_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
#: Ray Train settings for a Ray this process starts on the local machine: no spot preemption to
#: watch for and no Prometheus to scrape Train's metrics, and the controller polls its workers
#: every 0.1 s instead of 2 s, so it notices each report and the end of a run sooner. A Train run
#: whose function has returned ends 0.3 s later instead of 1.1 s at 0.5 s;
#: a poll is one small RPC per worker. bench/overhead.py measures the whole study. A local Ray's
#: control service (GCS) is never restarted, so its processes give up on a lost one after 10 s
#: instead of 60 s: a SIGTERM to the driver's whole process group stops the GCS with the driver,
#: which would otherwise wait out the 60 s while the Train workers go on training. A cluster
#: keeps Ray's defaults.
LOCAL_RAY_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_gcs_rpc_server_reconnect_timeout_s": "10",
}
#: Ray's authentication for every Ray a study starts or joins, unless RAY_AUTH_MODE is set:
#: token, decided here rather than by the Ray version (2.60 turns it on for a new local Ray,
#: 2.61 for every cluster). Without it anyone who reaches the Ray ports, which listen on the
#: machine's address, can run code as this user. cluster.yaml and cluster.local.yaml start their
#: nodes the same way.
AUTH_MODE = "token"
#: Where Ray looks for its token when neither RAY_AUTH_TOKEN nor RAY_AUTH_TOKEN_PATH is set.
DEFAULT_TOKEN = Path("~/.ray/auth_token")


def _git_sha() -> str | None:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in VERSION_PACKAGES}


def ensure_private_token(env: Mapping[str, str] = os.environ) -> Path | None:
    """The token file a token-auth Ray started here will read, made if missing, or None when
    auth is off or the token comes from the environment.

    Ray 2.60 makes a missing token file itself, readable by every user of the machine (0644),
    and each of them could then use the cluster: this makes it owner-only first (0600, 256 random
    bits as hex, Ray's own format), and warns about an existing one that others can read.
    """
    if env.get("RAY_AUTH_MODE", "").lower() != "token":
        return None
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return None
    path = DEFAULT_TOKEN.expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            print(
                f"warning: {path} (the Ray token) can be read by other users "
                f"(mode {path.stat().st_mode & 0o777:o}): chmod 600 {path}",
                file=sys.stderr,
                flush=True,
            )
        return path
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


def use_auth_mode() -> str:
    """Set RAY_AUTH_MODE to :data:`AUTH_MODE` unless it is set, and make this process's Ray agree.

    Ray reads the mode once, when it is imported; a process that imported Ray before the variable
    was set would start a token-auth GCS it cannot itself talk to ("Failed to start GCS"). Ray's
    own switch (what ``ray.init`` calls when it turns token auth on by default) re-reads it.
    """
    mode = os.environ.setdefault("RAY_AUTH_MODE", AUTH_MODE).lower()
    if mode == "token":
        from ray._private.authentication import authentication_token_setup

        authentication_token_setup._enable_token_auth()
    return mode


def connect(address: str, log: Path | None = None) -> dict[str, float]:
    """Join the Ray at ``address`` (or start a local one) and return what it offers. With a
    ``log`` file, quietly (``study/console.py``): Ray's own lines go there, and its workers'
    output is not forwarded to this process."""
    with _console(log):
        _start(address, log_to_driver=log is None)
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def _console(log: Path | None) -> contextlib.AbstractContextManager[TextIO]:
    """:func:`study.console.quiet` into ``log``, or the terminal as it is (None: ``--verbose``)."""
    return contextlib.nullcontext(sys.stdout) if log is None else quiet(log)


def _start(address: str, log_to_driver: bool = True) -> bool:
    """Start a local Ray (dashboard on 127.0.0.1: Train needs it to free stopped trials' workers,
    docs/ARCHITECTURE.md) or join a cluster, unless this process is already connected; True if
    this call started it. ``log_to_driver=False``: what Ray's workers print stays in Ray's
    session logs instead of being printed by this process."""
    for key, value in STUDY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return False
    mode = use_auth_mode()
    if address == "local":
        start_local_ray(log_to_driver=log_to_driver)
        return True
    try:
        ray.init(address=address, log_to_driver=log_to_driver)
    except ray.exceptions.AuthenticationError as exc:
        raise PreflightError(
            f"--address {address}: Ray's token authentication failed (RAY_AUTH_MODE={mode}): "
            f"{str(exc).splitlines()[0]}; the cluster's token belongs in {DEFAULT_TOKEN} "
            "(cluster.yaml copies it to every node), or join a cluster without token auth "
            "with RAY_AUTH_MODE=disabled"
        ) from None
    return True


def start_local_ray(**init_kwargs: Any) -> None:
    """``ray.init`` of a Ray on this machine, with the dashboard on 127.0.0.1 and Train's
    small-machine settings (:data:`LOCAL_RAY_ENV`), inherited by every Ray process started here.

    The dashboard gets a port chosen now, and every process of this Ray is told that address
    (``RAY_API_SERVER_ADDRESS``): Train's cleaner of stopped trials' workers finds the dashboard
    by looking for *the* local Ray otherwise, fails with "multiple active Ray instances" when
    another one runs on the machine, and the stopped trial's workers then block the next trial.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    # Always ours: an inherited address names another Ray's dashboard, not the one started here.
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ensure_private_token()
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, **init_kwargs)


def _tuner(
    kind: Kind,
    spec: SearchSpec,
    folder: StudyFolder,
    trainable: Any,
    ctx: StudyContext,
    concurrent: int,
    terminal: TextIO,
) -> tune.Tuner:
    path = folder.root / kind
    if tune.Tuner.can_restore(str(path)):
        print(f"resuming {path}", file=terminal, flush=True)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    param_space, tune_config = tune_setup(kind, spec, folder, ctx.study, concurrent)
    run_config = tune.RunConfig(
        name=kind,
        storage_path=str(folder.root),
        callbacks=[StudyRecorder(ctx, kind)],
        failure_config=tune.FailureConfig(max_failures=0),
        verbose=0,  # StudyRecorder prints one line per epoch instead of the full result dict
    )
    return tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config, run_config=run_config
    )


def tune_setup(
    kind: Kind, spec: SearchSpec, folder: StudyFolder, study: str, concurrent: int
) -> tuple[dict[str, Any], tune.TuneConfig]:
    """The param space and Tune config of one of the study's experiments: the reference trial,
    a seeds-only grid (no Optuna, no early stopping) or the Optuna + scheduler search (its
    Optuna study named ``study``, in ``optuna.db``).

    A finished or stopped trial's Tune driver process runs the next trial (``reuse_actors``): it
    skips a process start and the ~2.5 s import of Ray Train and torch. A trial that ASHA stops
    aborts its Train run before Tune hands its process on (:mod:`study.bridge`)."""
    s = spec.study
    if kind == "reference":
        param_space: dict[str, Any] = spec.reference_params()
        return param_space, tune.TuneConfig(
            num_samples=1, scheduler=FIFOScheduler(), metric=s.metric, mode=s.mode
        )
    if spec.seeds_only:
        # Replicas of one config: Tune's own grid, no sampler to inform, every seed to the end.
        return {"seed": tune.grid_search(list(s.seeds))}, tune.TuneConfig(
            num_samples=1,
            scheduler=FIFOScheduler(),
            metric=s.metric,
            mode=s.mode,
            max_concurrent_trials=concurrent,
            time_budget_s=s.time_budget_s or None,
            reuse_actors=True,
        )
    searcher = StudySearcher(
        metric=s.metric,
        mode=s.mode,
        sampler=make_sampler(spec),
        study_name=study,
        storage=_optuna_storage(folder.optuna_db),
    )
    return to_tune_param_space(spec), tune.TuneConfig(
        metric=s.metric,
        mode=s.mode,
        search_alg=searcher,
        scheduler=make_scheduler(s),
        num_samples=s.num_samples,
        max_concurrent_trials=concurrent,
        time_budget_s=s.time_budget_s or None,
        reuse_actors=True,
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


def _optuna_storage(db: Path) -> Any:
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{db}")


def fail_orphaned_optuna_trials(db: Path, study: str) -> list[int]:
    """Mark the trials of ``optuna.db`` still RUNNING as FAIL; return their numbers.

    Called when the search has finished, so nothing runs any more. A driver killed between
    Optuna creating a trial and Tune saving the searcher's state leaves that trial RUNNING in
    the database for ever (the restored searcher does not know it); optuna-dashboard, the report's
    importance and any study that loads the database would count it as in progress.
    """
    if not db.exists():  # a seeds-only study has no sampler
        return []
    import optuna
    from optuna.trial import TrialState

    storage = _optuna_storage(db)
    try:
        found = optuna.load_study(study_name=study, storage=storage)
    except KeyError:  # no such study in the file
        return []
    running = found.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return [t.number for t in running]


def _fit_interrupted(tuner: tune.Tuner) -> bool:
    """Run ``tuner.fit()``; True if Ctrl-C (SIGINT) or SIGTERM stopped it.

    On the first SIGINT Tune saves its state, stops the trials and *returns normally*; the only
    trace is that its handler puts back the handler it found. So we install a marker handler
    first: still in place after ``fit()`` means Tune's handler fired. (Without Tune's handler,
    ``TUNE_DISABLE_SIGINT_HANDLER=1``, the marker itself raises ``KeyboardInterrupt``.) Signal
    handlers exist in the main thread only; elsewhere Tune does not catch SIGINT either.

    SIGTERM (``kill``, ``timeout``, a batch scheduler's or Kubernetes' stop) gets the same
    answer. Tune does not catch it, and the handler ``ray.init`` installs exits at once, losing
    what Tune did not save yet and leaving Ray's C++ stack dump on the terminal.
    """
    if threading.current_thread() is not threading.main_thread():
        tuner.fit()
        return False

    def marker(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, marker)
    previous_term = signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        tuner.fit()
        return signal.getsignal(signal.SIGINT) is marker and not int(
            os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        # None: a handler not set from Python, which Python cannot put back; SIG_DFL is closest.
        signal.signal(signal.SIGTERM, previous_term or signal.SIG_DFL)


def _as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM handler: whatever SIGINT would do now (Tune's graceful stop on the first, the
    marker's ``KeyboardInterrupt`` on the second)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # always, inside _fit_interrupted
        handler(signal.SIGINT, frame)


def _context(plan: StudyPlan, dataset: PreparedDataset) -> StudyContext:
    s = plan.spec.study
    cfg = plan.spec.base_config()
    synthetic = cfg.data.synthetic if dataset.meta.get("name") == "synthetic" else None
    val = eval_metric_names(cfg.eval, "val", cfg.data.history_length, synthetic)
    return StudyContext(
        study=plan.name,
        study_dir=str(plan.folder.root),
        metric=s.metric,
        mode=s.mode,
        param_kinds=dict(plan.spec.param_kinds()),
        base=to_dict(plan.spec.base_config()),
        gpus_per_trial=s.workers_per_trial * s.gpus_per_worker,
        data_fingerprint=dataset.fingerprint,
        git_sha=_git_sha(),
        versions=_versions(),
        hparams_metrics=hparams_order(s.metric, val),
        train_storage=plan.train_storage,
    )


def _trainable(plan: StudyPlan, cluster: dict[str, float]) -> Any:
    """:func:`study.driver.run_trial` with the study's trial plan, wrapped with its resources."""
    s = plan.spec.study
    trial_plan = TrialPlan(
        base=to_dict(plan.spec.base_config()),
        train_storage=plan.train_storage,
        workers_per_trial=s.workers_per_trial,
        gpus_per_worker=s.gpus_per_worker,
        cpus_per_worker=s.cpus_per_worker,
        max_failures=s.max_failures,
    )
    # On a cluster whose head offers a "driver" resource (cluster.yaml), trial drivers stay there.
    driver = {"CPU": DRIVER_CPUS, **({"driver": 1} if "driver" in cluster else {})}
    return tune.with_resources(tune.with_parameters(run_trial, plan=trial_plan), driver)


def run_studies(plans: list[StudyPlan], fits: list[int]) -> int:
    """Run (or resume) the studies of ``plans`` one after another on one Ray, ``fits[i]`` trials
    of study ``i`` at once; returns the process exit code (the first study that does not end
    with 0 stops the run: rerunning the command resumes it, finished studies are skipped).

    Every dataset is built or read before Ray starts. A local Ray started here is stopped at the
    end, before exit, not under the workers' feet; a Ray that was already up stays.
    """
    datasets = [ensure_dataset(p.spec.base_config().data) for p in plans]
    address = plans[0].options.address
    was_up = ray.is_initialized()
    try:
        for plan, n, dataset in zip(plans, fits, datasets, strict=True):
            code = run_study(plan, n, dataset)
            if code != 0:
                return code
        return 0
    finally:
        if address == "local" and not was_up and ray.is_initialized():
            with _console(None if plans[0].options.verbose else plans[0].folder.ray_log):
                ray.shutdown()


def run_study(plan: StudyPlan, fits: int, dataset: PreparedDataset) -> int:
    """Run (or resume) the study of ``plan`` on ``dataset`` (its prepared data), of which
    ``fits`` trials fit the cluster at once; starts or joins Ray if this process has none, and
    leaves it running (:func:`run_studies` stops it); returns the process exit code."""
    spec, folder = plan.spec, plan.folder
    # With Tune's file loggers off (our records replace them) its result grid warns once per trial
    # that result.json is missing: true and expected.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    log = None if plan.options.verbose else folder.ray_log
    with _console(log) as terminal:
        _start(plan.options.address, log_to_driver=log is None)
        cluster = {k: float(v) for k, v in ray.cluster_resources().items()}
        concurrent = spec.study.max_concurrent_trials or fits
        progress = _progress(plan, concurrent, terminal)
        print(_header(plan, cluster, concurrent, progress.total, log), file=terminal, flush=True)
        follow(folder.root, progress)
        ctx = _context(plan, dataset)
        trainable = _trainable(plan, cluster)
        start = time.perf_counter()
        kinds: list[Kind] = ["reference", "search"] if spec.study.reference else ["search"]
        for kind in kinds:
            if _fit_interrupted(_tuner(kind, spec, folder, trainable, ctx, concurrent, terminal)):
                rebuild_leaderboard(ctx)  # what finished so far; the study is not marked done
                print(
                    f"\ninterrupted: rerun the same command to resume study {plan.name}",
                    file=terminal,
                    flush=True,
                )
                return EXIT_INTERRUPTED
    rebuild_leaderboard(ctx)
    for number in fail_orphaned_optuna_trials(folder.optuna_db, plan.name):
        print(f"optuna: trial {number} was left RUNNING by a killed driver; marked FAIL")
    wall = time.perf_counter() - start
    atomic_write_text(folder.done, json.dumps({"wall_s": wall, "finished": time.time()}) + "\n")
    print(f"\nstudy {plan.name} finished in {wall:.0f} s")
    print(summary(folder, spec.study.metric), flush=True)
    from study.report import try_write_report  # matplotlib only when a study ends

    try_write_report(folder.root)  # a plotting failure is a printed warning, never a failed study
    return 0


def _progress(plan: StudyPlan, concurrent: int, terminal: TextIO) -> StudyProgress:
    """The study's console lines, knowing the trials a previous driver ran (resume)."""
    spec = plan.spec
    s = spec.study
    searched = len(s.seeds) if spec.seeds_only else s.num_samples
    progress = StudyProgress(
        total=int(s.reference) + searched,
        epochs=spec.base_config().train.epochs,
        metric=s.metric,
        mode=s.mode,
        concurrent=concurrent,
        stream=terminal,
    )
    progress.resume(_known_trials(plan.folder))
    return progress


def _known_trials(folder: StudyFolder) -> list[TrialRecord]:
    """The study's records, the reference first, then in the order the trials first reported
    (when their config file was written)."""

    def first_report(record: TrialRecord) -> tuple[bool, int]:
        config = folder.config(record.trial_id)
        return record.kind != "reference", config.stat().st_mtime_ns if config.exists() else 0

    return sorted(read_records(folder), key=first_report)


def _header(
    plan: StudyPlan, cluster: dict[str, float], concurrent: int, total: int, log: Path | None
) -> str:
    """The lines after the plan: the Ray it runs on, the trials, where Ray's own output goes."""
    s = plan.spec.study
    offered = ", ".join(f"{k} {v:g}" for k, v in cluster.items() if k in ("CPU", "GPU", "driver"))
    searched = total - int(s.reference)
    where = (
        "here (--verbose)"
        if log is None
        else f"{log} (driver), {_session_logs()} (workers); --verbose prints it here"
    )
    return "\n".join(
        [
            f"ray:            {plan.options.address}, {offered}{_dashboard()}",
            f"trials:         {'reference + ' if s.reference else ''}{searched} searched, "
            f"{plan.spec.base_config().train.epochs} epochs at most, {concurrent} at a time",
            f"ray's output:   {where}",
        ]
    )


def _dashboard() -> str:
    """``, dashboard http://...`` of the Ray this process is connected to, or nothing."""
    url = getattr(_local_node(), "webui_url", None)
    return f", dashboard {url if '://' in url else 'http://' + url}" if url else ""


def _session_logs() -> str:
    """The folder of this Ray's session logs on this machine (every node has its own)."""
    node = _local_node()
    if node is None:
        return "Ray's session logs (/tmp/ray/session_*/logs on each node)"
    return str(Path(node.get_session_dir_path()) / "logs")


def _local_node() -> Any:
    """Ray's object for this machine's node of the connected Ray (private, pinned:
    docs/ARCHITECTURE.md), or None (a Ray Client connection has none)."""
    return getattr(ray._private.worker, "_global_node", None)
