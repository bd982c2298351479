"""A study run before Ray: its options, its plan, and the preflight that refuses what cannot run.

Everything here is Ray-free, so a bad space file, a missing dataset or model folder, an unwritable
study folder or a trial that cannot fit the machine is refused in a second, with one line naming
the file, key, path or resource, before anything pays for a Ray start:

* :class:`StudyOptions`: what the command line asks for (``run_search.py``'s flags);
* :func:`prepare` -> :class:`StudyPlan`: the space file read with those overrides, its inputs
  checked, and where the study writes;
* :func:`trial_resources` / :func:`preflight`: what one trial holds and how many fit at once;
* the exit codes of a study run.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import json
import os
from pathlib import Path

from study.records import StudyFolder
from study.search_space import (
    CategoricalParam,
    SearchSpaceError,
    SearchSpec,
    corner_points,
    dataset_studies,
    describe,
    load_search_spec,
)
from vlm2rec.config import ConfigError, DataConfig, EvalConfig, RunConfig
from vlm2rec.data.schema import DatasetError, read_dataset

__all__ = [
    "DEFAULT_SPACE",
    "DRIVER_CPUS",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "PreflightError",
    "StudyOptions",
    "StudyPlan",
    "check_metrics",
    "check_storage",
    "local_resources",
    "looks_like_path",
    "merged_leaderboard",
    "preflight",
    "prepare",
    "trial_resources",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "search_spaces" / "default.toml"
DRIVER_CPUS = 0.5  #: CPU share of each trial's Tune driver (its workers ask for their own)

#: Exit code of a run refused before any trial started (bad file, missing data, no room).
EXIT_BAD_INPUT = 2
#: Exit code of a study that failed while running (its state is kept: rerun resumes it).
EXIT_FAILED = 1
#: Exit code after Ctrl-C: the study state is saved, rerunning the command resumes it.
EXIT_INTERRUPTED = 130


class PreflightError(ConfigError):
    """The study cannot start: its inputs or the cluster's resources don't allow it."""


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """What the command line asks for; ``None`` leaves the space file's own value."""

    spaces: tuple[Path, ...] = (DEFAULT_SPACE,)  #: the study (search-space) TOML files, in order
    storage: Path = Path("studies")  #: study folders live here
    name: str | None = None  #: study name (default: [study].name of the space file)
    #: dataset folders replacing every space's [study].datasets (None: the files' own)
    datasets: tuple[str, ...] | None = None
    address: str = "local"  #: local | auto | ray://host:10001
    train_storage: str | None = None  #: Train checkpoint storage (default <study>/train)
    num_samples: int | None = None  #: overrides [study].num_samples
    max_concurrent: int | None = None  #: overrides [study].max_concurrent_trials
    dry_run: bool = False  #: print the resolved plan and the preflight, train nothing
    skip_preflight: bool = False  #: autoscaling clusters: don't check resources
    verbose: bool = False  #: Ray's, Train's and Tune's own output on the terminal too


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """A study as it will run: the spec with the command line's overrides, and where it writes."""

    options: StudyOptions  #: what was asked for
    spec: SearchSpec  #: the space file with the overrides, the dataset path absolute
    name: str  #: the study's name (its folder under the storage)
    folder: StudyFolder  #: <storage>/<name>, absolute
    train_storage: str  #: where the Train workers write checkpoints
    warnings: tuple[str, ...] = ()  #: inputs that will fail some trials, not the study
    #: the name before any dataset suffix ([study].name or --name): what the merged table is named by
    group: str = ""

    def text(self) -> str:
        """The resolved plan, as printed before the study (and by ``--dry-run``)."""
        need = trial_resources(self.spec)
        return "\n".join(
            [
                describe(self.spec),
                f"study folder:   {self.folder.root}",
                f"train storage:  {self.train_storage}",
                f"per trial:      CPU {need['CPU']:g}, GPU {need['GPU']:g}",
                "reference trial (alpha = beta = 0): "
                + ("yes" if self.spec.study.reference else "no"),
            ]
        )


def _load_specs(space: Path, options: StudyOptions) -> list[SearchSpec]:
    """The study file with the command line's overrides, one spec per dataset
    (:func:`~study.search_space.dataset_studies`), each one's dataset path made absolute,
    because every node of a cluster resolves it on its own."""
    spec = load_search_spec(space)
    study = spec.study
    if options.name is not None:  # before the dataset suffixes: --name NAME gives NAME-<dataset>
        study = dataclasses.replace(study, name=options.name)
    if options.num_samples is not None:
        study = dataclasses.replace(study, num_samples=options.num_samples)
    if options.max_concurrent is not None:
        study = dataclasses.replace(study, max_concurrent_trials=options.max_concurrent)
    try:
        specs = dataset_studies(dataclasses.replace(spec, study=study), options.datasets)
    except ConfigError as exc:
        raise SearchSpaceError(f"{space}: {exc}") from None
    return [_absolute_data(s) for s in specs]


def _absolute_data(spec: SearchSpec) -> SearchSpec:
    path = Path(spec.base_config().data.path)
    path = path if path.is_absolute() else Path.cwd() / path
    study = spec.study
    if study.datasets:  # the study of one entry of a dataset list: the entry is its data.path
        study = dataclasses.replace(study, datasets=(str(path),))
    return dataclasses.replace(spec, study=study, fixed={**spec.fixed, "data.path": str(path)})


def prepare(options: StudyOptions) -> list[StudyPlan]:
    """Read the space files and check the run's inputs: a bad file, a missing base model folder,
    a missing dataset that will not be built, or two studies that would share a folder (or, in a
    run of several, rank by different metrics) raises (``ConfigError``, ``DatasetError``).

    One plan per space file and dataset, in the order given: the studies a run runs one after
    another.
    """
    plans = []
    for space in options.spaces:
        group = options.name or load_search_spec(space).study.name
        plans += [_plan(spec, options, group) for spec in _load_specs(space, options)]
    _check_together(plans)
    return plans


def _plan(spec: SearchSpec, options: StudyOptions, group: str) -> StudyPlan:
    warnings = check_model_paths(spec)
    check_dataset(spec, validate=options.dry_run)
    check_metrics(spec)
    name = spec.study.name
    folder = StudyFolder((options.storage / name).resolve())
    train_storage = options.train_storage or str(folder.root / "train")
    return StudyPlan(options, spec, name, folder, train_storage, tuple(warnings), group)


def _check_together(plans: list[StudyPlan]) -> None:
    """The studies of one run need their own folders, and one ranking for the merged table."""
    seen: dict[Path, StudyPlan] = {}
    for p in plans:
        if p.folder.root in seen:
            raise PreflightError(
                f"{seen[p.folder.root].spec.source} and {p.spec.source}: two studies of this run "
                f"would share the study folder {p.folder.root}; give each space another "
                "[study].name or dataset"
            )
        seen[p.folder.root] = p
    rankings = {(p.spec.study.metric, p.spec.study.mode) for p in plans}
    if len(rankings) > 1:
        raise PreflightError(
            f"the studies of this run rank by different metrics {sorted(rankings)}: the merged "
            "leaderboard needs one [study].metric and mode; run them separately"
        )


def merged_leaderboard(plans: list[StudyPlan]) -> Path | None:
    """Where a run of several studies writes their merged leaderboard:
    ``<storage>/<study names, without dataset suffixes, joined by +>.parquet``; None for one."""
    if len(plans) < 2:
        return None
    names = dict.fromkeys(p.group for p in plans)  # in order, without repeats
    return plans[0].folder.root.parent / f"{'+'.join(names)}.parquet"


def trial_resources(spec: SearchSpec) -> dict[str, float]:
    """What one running trial holds: its driver's CPU share plus its Train workers."""
    s = spec.study
    return {
        "CPU": DRIVER_CPUS + s.workers_per_trial * s.cpus_per_worker,
        "GPU": s.workers_per_trial * s.gpus_per_worker,
    }


def preflight(spec: SearchSpec, cluster: dict[str, float]) -> int:
    """Check that one trial fits the cluster; return how many trials fit at once.

    Without it an infeasible plan does not fail: Tune waits forever for resources that never come.
    """
    need = trial_resources(spec)
    for key, amount in need.items():
        if amount > cluster.get(key, 0.0) + 1e-9:
            raise PreflightError(
                f"preflight: one trial needs {key}={amount:g} (driver {DRIVER_CPUS:g} CPU + "
                f"{spec.study.workers_per_trial} workers x {spec.study.cpus_per_worker:g} CPU / "
                f"{spec.study.gpus_per_worker:g} GPU) but the cluster has {key}={cluster.get(key, 0.0):g}; "
                "lower workers/resources in the space file, or --skip-preflight on an autoscaling cluster"
            )
    fits = [int(cluster.get(k, 0.0) // v) for k, v in need.items() if v > 0]
    return max(1, min(fits))


def local_resources() -> dict[str, float]:
    """What a local ``ray.init()`` on this machine would offer, without starting Ray."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def looks_like_path(name: str) -> bool:
    """``embedder.name`` meant as a local folder: ``/…``, ``./…``, ``~/…`` or more than one ``/``.

    Built-in names (``tiny-clip``) and hub ids (``org/name``) are not paths.
    """
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def check_model_paths(spec: SearchSpec) -> list[str]:
    """Refuse a base/fixed ``embedder.name`` that is a missing folder; warn about searched ones.

    A searched choice that is missing only fails its own trials (the study goes on), so it is a
    warning; the base model is in every trial, so it is an error before Ray starts.
    """
    name = spec.base_config().embedder.name
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise PreflightError(
            f"{spec.source}: embedder.name = {name!r} looks like a local model folder but "
            f"{Path(name).expanduser()} does not exist"
        )
    return [
        f'warning: {spec.source}: params."embedder.name" choice {choice!r} does not exist; '
        "its trials will fail"
        for p in spec.params
        if isinstance(p, CategoricalParam) and p.path == "embedder.name"
        for choice in p.choices
        if looks_like_path(str(choice)) and not Path(str(choice)).expanduser().exists()
    ]


def check_dataset(spec: SearchSpec, validate: bool) -> None:
    """A missing dataset folder is only fine when it will be built (``prepare_if_missing``).

    ``validate`` also reads and checks an existing folder (the dry run; a real run does this in
    ``ensure_dataset`` before Ray starts).
    """
    data = spec.base_config().data
    path = Path(data.path)
    empty = not path.exists() or (path.is_dir() and not any(path.iterdir()))
    if empty and not data.prepare_if_missing:
        key = "dataset" if spec.study.datasets else "data.path ="  # a dataset list entry or not
        raise DatasetError(
            f"{spec.source}: {key} {path} does not exist and data.prepare_if_missing = false"
        )
    if validate and not empty:
        read_dataset(path)


def _will_be_synthetic(data: DataConfig) -> bool:
    """Whether the run's data is the synthetic benchmark (whose runs also report the generator's
    oracles): a missing folder will be built as one, an existing one says so in its meta.json."""
    path = Path(data.path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return True
    try:
        return bool(json.loads((path / "meta.json").read_text()).get("name") == "synthetic")
    except (OSError, ValueError, AttributeError):
        return False  # an unreadable dataset is refused by its own check, not here


def _trial_configs(spec: SearchSpec) -> list[RunConfig]:
    """The base run config and every corner's: what decides the names a trial reports."""
    configs = [spec.base_config()]
    configs += [spec.run_config(point) for point in corner_points(spec)]
    if spec.study.reference:
        configs.append(spec.run_config(spec.reference_params()))
    return configs


def check_metrics(spec: SearchSpec) -> None:
    """Refuse a ``study.metric`` (what Tune, Optuna and ASHA read) or an ``eval.metric`` (what
    ``fit()`` selects the best epoch by) that some trial would not report.

    Without this, the first trial trains to its end and the study then dies in a Ray traceback.
    The names come from running the reporting code itself (:mod:`vlm2rec.metric_names`), for
    every distinct evaluation setting among the trials (``eval.*`` may be searched).
    """
    from vlm2rec.metric_names import reported_metrics  # torch: only once the file is valid

    synthetic = _will_be_synthetic(spec.base_config().data)
    seen: dict[tuple[EvalConfig, bool], frozenset[str]] = {}
    for cfg in _trial_configs(spec):
        names = seen.get((cfg.eval, synthetic))
        if names is None:
            names = seen[(cfg.eval, synthetic)] = reported_metrics(cfg, synthetic)
        _check_metric(spec, "study.metric", spec.study.metric, names)
        _check_metric(spec, "eval.metric", cfg.eval.metric, names)
        if cfg.eval.every_epochs > 1 and cfg.eval.metric != spec.study.metric:
            # Epochs that skip validation carry eval.metric forward (study/worker.py), no other.
            raise SearchSpaceError(
                f"{spec.source}: study.metric = {spec.study.metric!r} but eval.metric = "
                f"{cfg.eval.metric!r} with eval.every_epochs = {cfg.eval.every_epochs}: epochs "
                "without validation would not report the study metric; make them equal"
            )


def _check_metric(spec: SearchSpec, key: str, metric: str, names: frozenset[str]) -> None:
    if metric in names:
        return
    prefix = metric.split("/", 1)[0] + "/"
    same_split = sorted(n for n in names if n.startswith(prefix)) or sorted(names)
    close = difflib.get_close_matches(metric, same_split, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"reported: {', '.join(same_split)}"
    raise SearchSpaceError(
        f"{spec.source}: {key} = {metric!r} is not reported by the trials of this study "
        f"(a run with its eval settings reports {len(names)} metrics); {hint}"
    )


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_storage(study_dir: Path, create: bool = True) -> None:
    """The study folder must be creatable and writable before any trial runs.

    A real run creates it and writes a probe file in it; a dry run (``create=False``) creates
    nothing and writes the same probe where the real run's first folder would be created (the
    nearest existing parent), so both refuse the same storage with the same message.
    """
    try:
        if create:
            study_dir.mkdir(parents=True, exist_ok=True)
        where = study_dir if create else _nearest_existing(study_dir)
        if not where.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(where))
        probe = where / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(
            f"--storage: study folder {study_dir} is not writable ({exc.strerror or exc})"
        ) from None
