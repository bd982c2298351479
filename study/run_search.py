"""Run a VLM2Rec hyperparameter study on Ray: Tune + Optuna + ASHA over Ray Train trials.

    python study/run_search.py                       # the embedded default: local Ray, CPU, minutes
    python study/run_search.py --space search_spaces/qwen2vl_amazon.toml --address auto \\
        --train-storage s3://bucket/vlm2rec
    python study/run_search.py --dry-run             # the resolved plan, no training
    python study/run_search.py --space search_spaces/paper_amazon.toml --dataset data/toys18 \\
        --dataset data/sports18                      # one study per dataset, one merged table

The study folder is ``<storage>/<name>``: ``leaderboard.parquet``, ``trials/``, ``configs/``,
``tensorboard/``, ``optuna.db``, ``ray.log`` and Tune's experiment state (``reference/``,
``search/``). Running the same command again resumes an unfinished study, or says that it is
finished. Several ``--space`` files, or a ``[study].datasets`` list (``--dataset``), run several
studies one after another (``<name>-<dataset folder>`` for a dataset's), ending with their
leaderboards merged into ``<storage>/<names joined by +>.parquet``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python study/run_search.py`: see study/_script.py
    import _script  # noqa: F401

from study import lock
from study.leaderboard import (
    LeaderboardError,
    format_table,
    merge,
    read_leaderboard,
    summary,
    write_leaderboard,
)
from study.plan import (
    DEFAULT_SPACE,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    StudyOptions,
    StudyPlan,
    check_storage,
    local_resources,
    merged_leaderboard,
    preflight,
    prepare,
)
from vlm2rec.config import ConfigError
from vlm2rec.data.schema import DatasetError

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "main", "parse_args"]


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> StudyOptions:
    """The command line as :class:`~study.plan.StudyOptions`."""
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--space",
        dest="spaces",
        type=Path,
        action="append",
        help=f"study TOML; give it several times to run several studies (default: {DEFAULT_SPACE})",
    )
    p.add_argument("--storage", type=Path, default=Path("studies"), help="study folders live here")
    p.add_argument("--name", help="study name (default: [study].name of the space file)")
    p.add_argument(
        "--dataset",
        dest="datasets",
        action="append",
        help="dataset folder, one study each (named <name>-<folder>); replaces [study].datasets; "
        "give it several times for several",
    )
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
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print what Ray, Train, Tune and the workers print (default: <study>/ray.log "
        "and Ray's session logs)",
    )
    args = vars(p.parse_args(argv))
    args["spaces"] = tuple(args["spaces"] or (DEFAULT_SPACE,))
    args["datasets"] = None if args["datasets"] is None else tuple(args["datasets"])
    return StudyOptions(**args)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point; exit 0 done, 2 refused before any trial (one ``error:`` line), 1 failed
    mid-study, 130 Ctrl-C (1 and 130: rerun to resume)."""
    options = parse_args(argv, prog)
    try:
        return _run(options)
    except (ConfigError, DatasetError) as exc:  # PreflightError and SearchSpaceError included
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune took over SIGINT
        print("interrupted: rerun the same command to resume the study", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(options: StudyOptions) -> int:
    plans = prepare(options)
    for plan in plans:
        for line in plan.warnings:
            print(line, file=sys.stderr, flush=True)
        print(plan.text(), flush=True)
    if options.dry_run:
        return _dry_run(plans)
    for plan in plans:
        if plan.folder.done.exists():
            print(f"study {plan.name} is finished ({plan.folder.done}); its leaderboard:")
            print(summary(plan.folder, plan.spec.study.metric), flush=True)
    pending = [plan for plan in plans if not plan.folder.done.exists()]
    code = _run_pending(options, pending) if pending else 0
    if code != 0:
        return code
    try:
        _write_merged(plans)
    except (LeaderboardError, OSError) as exc:  # the studies are done: only the table is missing
        print(f"error: {exc}\nfix it and rerun the same command to write it", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _run_pending(options: StudyOptions, plans: list[StudyPlan]) -> int:
    """Lock every study folder and check every study against the cluster, then run them one
    after another on one Ray: a bad input is refused before the first study starts."""
    for plan in plans:
        check_storage(plan.folder.root)
    with contextlib.ExitStack() as locks:  # one driver per study folder, all held to the end
        for plan in plans:
            previous = locks.enter_context(lock.hold(plan.folder.root))
            if previous is not None:
                print(
                    f"took over the study lock of {previous.describe()}, which is gone", flush=True
                )
        log = None if options.verbose else plans[0].folder.ray_log  # Ray's lines: its file
        cluster, _ = _offered(options.address, log)
        return _run_on_ray(plans, _fits(plans, cluster))


def _fits(plans: list[StudyPlan], cluster: dict[str, float]) -> list[int]:
    """How many trials of each study fit ``cluster`` at once (1, unchecked, when told to skip)."""
    return [1 if p.options.skip_preflight else preflight(p.spec, cluster) for p in plans]


def _dry_run(plans: list[StudyPlan]) -> int:
    """Everything a real run checks before its first trial, with nothing created or locked."""
    options = plans[0].options
    for plan in plans:
        check_storage(plan.folder.root, create=False)
        holder = lock.held_by(plan.folder.root)
        if holder is not None:
            print(
                f"warning: this study is running now: {holder.describe()} (study {plan.name})",
                file=sys.stderr,
            )
    cluster, here = _offered(options.address)
    for plan, fits in zip(plans, _fits(plans, cluster), strict=True):
        print(f"preflight ok: {fits} trial(s) fit at once{here} (study {plan.name})", flush=True)
    merged = merged_leaderboard(plans)
    if merged is not None:
        print(f"{len(plans)} studies, one after another; merged leaderboard: {merged}", flush=True)
    return 0


def _write_merged(plans: list[StudyPlan]) -> None:
    """A run of several studies ends with their leaderboards as one table (a ``dataset`` and a
    ``study`` column tell the rows apart), written beside the study folders and printed."""
    path = merged_leaderboard(plans)
    if path is None:
        return
    tables = [
        read_leaderboard(p.folder.leaderboard) for p in plans if p.folder.leaderboard.exists()
    ]
    if not tables:
        return
    metric = plans[0].spec.study.metric
    table = merge(tables, metric=metric, mode=plans[0].spec.study.mode)
    write_leaderboard(table, path)
    print(f"\nthe {len(plans)} studies' leaderboards in one table ({path}):")
    print(format_table(table, metric, top=5), flush=True)


def _offered(address: str, log: Path | None = None) -> tuple[dict[str, float], str]:
    """What the cluster offers, and where that was counted (printed by the dry run).

    A local study starts its own Ray, which will offer exactly this machine: counted without
    starting (or even importing) Ray, so an impossible plan costs nothing. A cluster, or a Ray
    this process already runs, is asked (joined quietly, Ray's output to ``log``, unless None).
    """
    ray = sys.modules.get("ray")  # not imported: then this process runs no Ray either
    if address == "local" and not (ray is not None and ray.is_initialized()):
        return local_resources(), " on this machine"
    from study.tune_runner import connect

    return connect(address, log), ""


def _run_on_ray(plans: list[StudyPlan], fits: list[int]) -> int:
    from study import tune_runner  # Ray, Tune and Train: only for a run that trains

    try:
        return tune_runner.run_studies(plans, fits)
    except (LeaderboardError, OSError) as exc:  # e.g. the disk filled up mid-study
        print(f"error: {exc}\nfix it and rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
