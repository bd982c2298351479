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

# Tune's automatic CSV/JSON/TBX loggers duplicate our records and rename tags ('@' -> '_').
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from study.search_space import SearchSpec, describe, load_search_spec  # noqa: E402
from vlm2rec.config import ConfigError  # noqa: E402


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
            raise SystemExit(
                f"preflight: one trial needs {key}={amount:g} (driver {DRIVER_CPUS:g} CPU + "
                f"{spec.study.workers_per_trial} workers x {spec.study.cpus_per_worker:g} CPU / "
                f"{spec.study.gpus_per_worker:g} GPU) but the cluster has {key}={cluster.get(key, 0.0):g}; "
                "lower workers/resources in the space file, or --skip-preflight on an autoscaling cluster"
            )
    fits = [int(cluster.get(k, 0.0) // v) for k, v in need.items() if v > 0]
    return max(1, min(fits))


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
    args = parse_args(argv)
    try:
        spec = load_spec(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.name or spec.study.name
    study_dir = (args.storage / name).resolve()
    train_storage = args.train_storage or str(study_dir / "train")
    print(_plan_text(spec, study_dir, train_storage), flush=True)
    if args.dry_run and args.address == "local":
        return 0
    from study.tune_runner import run_study

    return run_study(spec, name, study_dir, train_storage, args)


if __name__ == "__main__":
    sys.exit(main())
