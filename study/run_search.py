"""Run a VLM2Rec hyperparameter study on Ray: Tune + Optuna + ASHA over Ray Train trials.

    python study/run_search.py                       # the embedded default: local Ray, CPU, minutes
    python study/run_search.py --space search_spaces/qwen2vl_amazon.toml --address auto \\
        --train-storage s3://bucket/vlm2rec
    python study/run_search.py --dry-run             # the resolved plan, no training

The study folder is ``<storage>/<name>``: ``leaderboard.parquet``, ``trials/``, ``configs/``,
``tensorboard/``, ``optuna.db`` and Tune's experiment state (``reference/``, ``search/``). Running the
same command again resumes an unfinished study, or says that it is finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python study/run_search.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "search_spaces" / "default.toml"
DRIVER_CPUS = 0.5  #: CPU share of each trial's Tune driver (its workers ask for their own)

from study.search_space import (  # noqa: E402
    CategoricalParam,
    SearchSpec,
    describe,
    load_search_spec,
)
from vlm2rec.config import ConfigError  # noqa: E402
from vlm2rec.data.schema import DatasetError, read_dataset  # noqa: E402

#: Exit code of a run refused before any trial started (bad file, missing data, no room).
EXIT_BAD_INPUT = 2
#: Exit code of a study that failed while running (its state is kept: rerun resumes it).
EXIT_FAILED = 1
#: Exit code after Ctrl-C: the study state is saved, rerunning the command resumes it.
EXIT_INTERRUPTED = 130


class PreflightError(ConfigError):
    """The study cannot start: its inputs or the cluster's resources don't allow it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--space", type=Path, default=DEFAULT_SPACE, help="study TOML (default: %(default)s)"
    )
    p.add_argument("--storage", type=Path, default=Path("studies"), help="study folders live here")
    p.add_argument("--name", help="study name (default: [study].name of the space file)")
    p.add_argument("--address", default="local", help="local | auto | ray://host:10001")
    p.add_argument(
        "--train-storage",
        help="Train checkpoint storage (shared on multi-node; default <study>/train)",
    )
    p.add_argument("--num-samples", type=int, help="override [study].num_samples")
    p.add_argument("--max-concurrent", type=int, help="override [study].max_concurrent_trials")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    p.add_argument(
        "--skip-preflight", action="store_true", help="autoscaling clusters: don't check resources"
    )
    return p.parse_args(argv)


def load_spec(args: argparse.Namespace) -> SearchSpec:
    """The study file with CLI overrides; the dataset path made absolute for every node."""
    spec = load_search_spec(args.space)
    study = spec.study
    if args.num_samples is not None:
        study = dataclasses.replace(study, num_samples=args.num_samples)
    if args.max_concurrent is not None:
        study = dataclasses.replace(study, max_concurrent_trials=args.max_concurrent)
    data_path = Path(spec.base_config().data.path)
    fixed = {
        **spec.fixed,
        "data.path": str(data_path if data_path.is_absolute() else Path.cwd() / data_path),
    }
    return dataclasses.replace(spec, study=study, fixed=fixed)


def trial_resources(spec: SearchSpec) -> dict[str, float]:
    """What one running trial holds: its driver's CPU share plus its Train workers."""
    s = spec.study
    return {
        "CPU": DRIVER_CPUS + s.workers_per_trial * s.cpus_per_worker,
        "GPU": s.workers_per_trial * s.gpus_per_worker,
    }


def preflight(spec: SearchSpec, cluster: dict[str, float]) -> int:
    """Check that one trial fits the cluster; return how many trials fit at once."""
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
        raise DatasetError(
            f"{spec.source}: data.path = {path} does not exist and data.prepare_if_missing = false"
        )
    if validate and not empty:
        read_dataset(path)


def check_storage(study_dir: Path) -> None:
    """The study folder must be creatable and writable before any trial runs."""
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        probe = study_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(
            f"--storage: study folder {study_dir} is not writable ({exc.strerror or exc})"
        ) from None


def local_resources() -> dict[str, float]:
    """What a local ``ray.init()`` on this machine would offer, without starting Ray."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def _plan_text(spec: SearchSpec, study_dir: Path, train_storage: str) -> str:
    need = trial_resources(spec)
    lines = [
        describe(spec),
        f"study folder:   {study_dir}",
        f"train storage:  {train_storage}",
        f"per trial:      CPU {need['CPU']:g}, GPU {need['GPU']:g}",
        f"reference trial (alpha = beta = 0): {'yes' if spec.study.reference else 'no'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 done, 2 refused before any trial (one ``error:`` line), 130 Ctrl-C."""
    args = parse_args(argv)
    try:
        return _run(args)
    except (ConfigError, DatasetError) as exc:  # PreflightError and SearchSpaceError included
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune took over SIGINT
        print("interrupted: rerun the same command to resume the study", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    spec = load_spec(args)
    for line in check_model_paths(spec):
        print(line, file=sys.stderr, flush=True)
    check_dataset(spec, validate=args.dry_run)
    name = args.name or spec.study.name
    study_dir = (args.storage / name).resolve()
    train_storage = args.train_storage or str(study_dir / "train")
    print(_plan_text(spec, study_dir, train_storage), flush=True)
    if args.dry_run and args.address == "local":
        fits = 1 if args.skip_preflight else preflight(spec, local_resources())
        print(f"preflight ok: {fits} trial(s) fit at once on this machine")
        return 0
    check_storage(study_dir)
    from study.leaderboard import LeaderboardError

    # Tune's automatic CSV/JSON/TBX loggers duplicate our records and rename tags ('@' -> '_').
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from study.tune_runner import run_study

    try:
        return run_study(spec, name, study_dir, train_storage, args)
    except (LeaderboardError, OSError) as exc:  # e.g. the disk filled up mid-study
        print(f"error: {exc}\nfix it and rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
