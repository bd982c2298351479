r"""What the study machinery costs: the same trials through ``run_search.py`` vs plain ``fit`` calls.

For each trial size, ``--trials`` K trials (the same configs and seeds: ``loss.alpha`` takes K grid
values, everything else is fixed) run twice, one after the other:

* **study**: ``python study/run_search.py --space <generated TOML>`` in a fresh process: local Ray,
  Tune (grid sampler, no scheduler, one trial at a time), one Ray Train worker per trial, our
  callbacks (trial records, leaderboard, TensorBoard) and the report at the end;
* **plain**: ``python bench/overhead.py --plain <same TOML>`` in a fresh process: the K run configs
  trained one after another by ``vlm2rec.train.fit`` with checkpoints (what ``vlm2rec.cli train``
  does), no Ray;
* **before** (with ``--before GIT_REF``, first): the study again, with the code of an older commit
  checked out in a git worktree, so that an overhead reduction is measured side by side with what
  it replaced, in the same run and under the same load;
* **floor** (once, first): K ``TorchTrainer.fit()`` calls of a function that returns at once, on a
  local Ray started the study's way: what Ray Train itself costs per run (its controller and
  worker processes, each of which imports torch), whatever the study does around it, split at
  the moments the function's worker process started and the function ran (:func:`floor_phases`).

Both use one torch thread for training and the same dataset (built before either is timed). Wall
time is taken around each process, so both include Python and torch imports.

Headline: study wall / plain wall for the smallest trials (where the fixed cost shows most); the
table prints the ratio for every size and the fixed cost per trial, ``(study - plain) / K``. The
study's wall time is split into what happens before and after Tune runs (Ray start-up, report,
shutdown), between trials (Tune's trial start and bookkeeping) and inside trials beyond the plain
fit, itself split into the epochs' own extra time (each epoch's ``time/epoch_s`` as the worker
measured it, study minus plain: training slowed by Ray's processes beside it) and the rest
(Train's worker group start and end, per-epoch reports and checkpoint uploads).

Both paths must train the same models: the script checks that each trial's ``val/ndcg@10`` in the
study's leaderboard equals the plain run's (``max_abs_metric_diff`` in the JSON).

Usage::

    python bench/overhead.py                        # K = 2 trials at each of 4 sizes, ~17 min
    python bench/overhead.py --before d06b331       # + the study before this round, ~28 min
    python bench/overhead.py --sizes 5s --trials 1 --out /tmp/overhead.json   # smoke, ~1 min
    python bench/overhead.py --floor-only --trials 5   # Ray Train's floor alone, ~2 min
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# bench/ is a folder of scripts, not a package: put it on the path so `common` imports from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import headline, write_result

if TYPE_CHECKING:
    from study.search_space import SearchSpec

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "search_spaces" / "base" / "synthetic.toml"
#: trial sizes, named by the plain work they aim at on one CPU thread (the JSON has the measured work)
SIZES: dict[str, dict[str, Any]] = {
    "5s": {"data.synthetic.users": 250, "train.epochs": 1},
    "25s": {"data.synthetic.users": 500, "train.epochs": 3},
    "60s": {"data.synthetic.users": 500, "train.epochs": 7},
    "100s": {"data.synthetic.users": 500, "train.epochs": 12},
}
#: the size whose ratio is the headline (the issue's goal: <= 1.15 at 60-s trials)
HEADLINE_SIZE = "60s"
#: the grid values of loss.alpha that tell the K trials apart
ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
METRIC = "val/ndcg@10"
#: the last commit before the latest overhead reductions (lazy model-family and peft imports in
#: the Train worker, reused trial processes without early stopping, a 0.1-s Train poll), for
#: ``--before``; 435915e is the one before the first round (lazy imports in the trial driver)
BEFORE_REDUCTIONS = "d06b331"


def space_toml(size: str, trials: int, data_root: Path) -> str:
    """The study file of one size: K grid trials, no reference, no scheduler, one worker."""
    knobs = SIZES[size]
    users = knobs["data.synthetic.users"]
    fixed = {
        "data.path": str(data_root / f"overhead-u{users}"),
        "train.batch_size": 64,
        **knobs,
    }
    lines = [
        f'base = "{BASE}"',
        "[study]",
        f'name = "overhead-{size}"',
        f'metric = "{METRIC}"',
        f"num_samples = {trials}",
        'sampler = "grid"',
        'scheduler = "none"',
        f"max_t = {knobs['train.epochs']}",
        "grace_period = 1",
        "workers_per_trial = 1",
        "cpus_per_worker = 1.0  # -> 1 torch thread, as the plain runs",
        "max_concurrent_trials = 1",
        "reference = false",
        "[fixed]",
        *(f'"{k}" = {json.dumps(v)}' for k, v in fixed.items()),
        '[params."loss.alpha"]',
        'type = "categorical"',
        f"choices = {list(ALPHAS[:trials])}",
    ]
    return "\n".join(lines) + "\n"


def grid_points(spec: SearchSpec) -> list[dict[str, Any]]:
    """Every point of the study's categorical grid (the trials the grid sampler will run)."""
    from study.search_space import CategoricalParam

    params = [p for p in spec.params if isinstance(p, CategoricalParam)]
    return [
        {p.path: v for p, v in zip(params, values, strict=True)}
        for values in itertools.product(*(p.choices for p in params))
    ]


def run_plain(space: Path, out: Path) -> None:
    """Child process: train every grid point with ``fit``, one after another; write the records."""
    import torch

    from study.search_space import load_search_spec
    from vlm2rec.train import fit

    torch.set_num_threads(1)
    spec = load_search_spec(space)
    records = []
    for point in grid_points(spec):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="overhead-ckpt-") as ckpt:
            result = fit(spec.run_config(point), checkpoint_root=ckpt)
        fit_s = time.perf_counter() - t0
        epoch_s = _epoch_seconds(result.history)
        records.append(
            {"params": point, "fit_s": fit_s, "epoch_s": epoch_s, METRIC: result.best_metric}
        )
    out.write_text(json.dumps(records) + "\n")


def _timed(
    cmd: list[str], log: Path, cwd: Path = ROOT, env: Mapping[str, str] | None = None
) -> float:
    """Run ``cmd`` in ``cwd`` with its output in ``log``; its wall seconds (raises on failure)."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(
            cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {log}")
    return wall


def run_search(code: Path, space: Path, storage: Path, log: Path) -> float:
    """Wall seconds of ``run_search.py`` of the source tree ``code`` (this repository or a worktree
    of an older commit, whose ``vlm2rec`` then comes first on PYTHONPATH), output in ``log``."""
    cmd = [sys.executable, str(code / "study" / "run_search.py"), "--space", str(space)]
    return _timed([*cmd, "--storage", str(storage)], log, code, source_env(code))


def source_env(code: Path) -> dict[str, str]:
    """What a process runs with to use the source tree ``code``: a worktree of an older commit
    comes first on PYTHONPATH (its ``study`` and ``vlm2rec``, for the Ray workers too)."""
    return {} if code == ROOT else {"PYTHONPATH": str(code)}


def run_study(code: Path, space: Path, storage: Path, log: Path) -> dict[str, Any]:
    """:func:`run_search`: its wall time and the study's records."""
    wall = run_search(code, space, storage, log)
    study_dir = storage / tomllib.loads(space.read_text())["study"]["name"]
    return {"wall_s": wall, **_study_record(study_dir)}


def _study_record(study_dir: Path) -> dict[str, Any]:
    """Per-trial metric and Tune wall time from the leaderboard; the Tune phase from study_done.json."""
    import pyarrow.parquet as pq

    rows = pq.read_table(study_dir / "leaderboard.parquet").to_pylist()
    done = json.loads((study_dir / "study_done.json").read_text())
    trials = [
        {
            "params": {"loss.alpha": r["param.loss.alpha"]},
            "trial_s": r["wall_s"],
            "epoch_s": _recorded_epoch_seconds(study_dir / "trials" / f"{r['trial_id']}.json"),
            METRIC: r[METRIC],
        }
        for r in rows
    ]
    return {"tune_s": float(done["wall_s"]), "trials": trials}


def _epoch_seconds(history: Sequence[Mapping[str, float]]) -> float:
    """Sum of a run's ``time/epoch_s``: its epochs as the training process timed them."""
    return sum(h.get("time/epoch_s", 0.0) for h in history)


def _recorded_epoch_seconds(record: Path) -> float | None:
    """:func:`_epoch_seconds` of a trial record (None for a study whose records lack it)."""
    if not record.exists():
        return None
    return _epoch_seconds(json.loads(record.read_text())["history"])


def measure(size: str, trials: int, work: Path, before: Path | None) -> dict[str, Any]:
    """Study (with the ``before`` code first, if given), then plain, for one size."""
    from study.search_space import load_search_spec
    from vlm2rec.data.prepare import ensure_dataset

    space = work / f"overhead-{size}.toml"
    space.write_text(space_toml(size, trials, work / "data"))
    ensure_dataset(load_search_spec(space).base_config().data)  # not timed, shared by all runs
    load_start = os.getloadavg()[0]  # other jobs on the machine inflate every wall time
    studies = {}
    if before is not None:
        studies["before"] = run_study(before, space, work / "before", work / f"before-{size}.log")
    studies["study"] = run_study(ROOT, space, work / "studies", work / f"study-{size}.log")
    plain_json = work / f"plain-{size}.json"
    plain_cmd = [sys.executable, "bench/overhead.py", "--plain", str(space), "--plain-out"]
    plain_wall = _timed([*plain_cmd, str(plain_json)], work / f"plain-{size}.log")
    plain = json.loads(plain_json.read_text())
    return {
        "size": size,
        "trials": trials,
        "knobs": SIZES[size],
        "plain_wall_s": plain_wall,
        "plain_fit_s_per_trial": sum(p["fit_s"] for p in plain) / trials,
        **{name: summarise(trials, st, plain_wall, plain) for name, st in studies.items()},
        "plain": plain,
        "load_average_1min_start_end": [load_start, os.getloadavg()[0]],
    }


def measure_floor(trials: int, work: Path) -> dict[str, Any]:
    """Ray Train's own cost per run (:func:`run_floor` in a fresh process)."""
    out = work / "floor.json"
    cmd = [sys.executable, "bench/overhead.py", "--trials", str(trials), "--floor-out", str(out)]
    wall = _timed(cmd, work / "floor.log")
    got = json.loads(out.read_text())
    fits, phases = got["fit_s"], got["phases_s"]
    mean = {k: sum(p[k] for p in phases) / len(phases) for k in phases[0]}
    return {**got, "wall_s": wall, "fit_s_mean": sum(fits) / len(fits), "phases_s_mean": mean}


def summarise(
    trials: int, study: Mapping[str, Any], plain_wall: float, plain: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """A study run against the plain one: ratio, fixed cost per trial, where the extra time goes."""
    by_alpha = {p["params"]["loss.alpha"]: p for p in plain}
    diffs = [abs(t[METRIC] - by_alpha[t["params"]["loss.alpha"]][METRIC]) for t in study["trials"]]
    fit_s = sum(p["fit_s"] for p in plain)
    trial_s = sum(t["trial_s"] for t in study["trials"])
    wall = study["wall_s"]
    study_epochs = [t.get("epoch_s") for t in study["trials"]]
    slower_epochs = (
        sum(study_epochs) - sum(p.get("epoch_s", 0.0) for p in plain)
        if None not in study_epochs
        else None
    )
    return {
        "wall_s": wall,
        "ratio": wall / plain_wall,
        "fixed_cost_s_per_trial": (wall - plain_wall) / trials,
        # the same fixed cost, split: what every trial pays (Tune phase minus the plain fits) and
        # what the study pays once (beyond the plain process's own imports)
        "per_trial_s": (study["tune_s"] - fit_s) / trials,
        "per_study_s": (wall - study["tune_s"]) - (plain_wall - fit_s),
        "split_s": {
            "outside_tune": wall - study["tune_s"],  # imports, Ray start, report, shutdown
            "between_trials": study["tune_s"] - trial_s,  # Tune's trial start-up and bookkeeping
            "inside_trials_beyond_fit": trial_s - fit_s,  # Train worker group, reports, uploads
            "of_which_slower_epochs": slower_epochs,  # the same epochs, timed by the worker
        },
        "max_abs_metric_diff": max(diffs) if diffs else None,
        "trials": study["trials"],
    }


def _print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    print(
        f"\n{'size':<5} {'K':>2} {'fit/trial':>9} {'plain':>7} {'code':<6} {'study':>7} "
        f"{'ratio':>6} {'fixed/trial':>11} {'= per trial':>11} {'+ once/K':>8} {'between':>8} "
        f"{'in-trial':>8} {'epochs+':>7} {'|dmetric|':>9}"
    )
    for r in rows:
        for code in ("before", "study"):
            if code not in r:
                continue
            c, s = r[code], r[code]["split_s"]
            slower = s.get("of_which_slower_epochs")
            print(
                f"{r['size']:<5} {r['trials']:>2} {r['plain_fit_s_per_trial']:>8.1f}s "
                f"{r['plain_wall_s']:>6.1f}s {code if code == 'before' else 'now':<6} "
                f"{c['wall_s']:>6.1f}s {c['ratio']:>5.2f}x {c['fixed_cost_s_per_trial']:>10.1f}s "
                f"{c['per_trial_s']:>10.1f}s {c['per_study_s'] / r['trials']:>7.1f}s "
                f"{s['between_trials']:>7.1f}s {s['inside_trials_beyond_fit']:>7.1f}s "
                f"{'-' if slower is None else f'{slower:.1f}s':>7} {c['max_abs_metric_diff']:>9.1e}"
            )


def run_floor(trials: int, out: Path) -> None:
    """Child process: ``trials`` TorchTrainer.fit() calls of a function that returns at once, one
    worker with one CPU, on a local Ray started the way a study starts it; seconds per fit. Then
    one more fit whose function times ``ray.train.report`` with and without a checkpoint of a
    trial's size (what ``train.checkpoint_every`` could save per epoch)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from study.tune_runner import start_local_ray, use_auth_mode

    use_auth_mode()
    start_local_ray(log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="overhead-floor-") as storage:

        def fit(name: str, fn: Any, config: dict[str, Any]) -> float:
            t0 = time.perf_counter()
            TorchTrainer(
                fn,
                train_loop_config=config,
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1.0}),
                run_config=RunConfig(name=name, storage_path=storage),
            ).fit()
            return time.perf_counter() - t0

        fits, phases = [], []
        for i in range(trials):
            marks = Path(storage) / f"marks-{i}.json"
            start = time.time()
            fits.append(fit(f"floor-{i}", _marks, {"out": str(marks)}))
            phases.append(floor_phases(start, json.loads(marks.read_text()), time.time()))
        reports = Path(storage) / "reports.json"
        fit("reports", _time_reports, {"out": str(reports)})
        report_s = json.loads(reports.read_text())
    ray.shutdown()
    out.write_text(json.dumps({"fit_s": fits, "phases_s": phases, "report_s": report_s}) + "\n")


def floor_phases(start: float, marks: Mapping[str, float], end: float) -> dict[str, float]:
    """Where one bare ``TorchTrainer.fit()`` from ``start`` to ``end`` (epoch seconds) spends its
    time, from the ``marks`` its function took (:func:`_marks`), in the order things happen:

    * ``to_worker_process``: the controller (a process of its own, which imports torch for the
      Torch backend), the placement group, the helper actors, until the worker's process starts;
    * ``worker_start``: the worker's own start-up (imports again, the Train context) until the
      function runs;
    * ``to_end``: the shutdown of the worker group and the controller after the function returns.
    """
    return {
        "to_worker_process": marks["process_start"] - start,
        "worker_start": marks["function_start"] - marks["process_start"],
        "to_end": end - marks["function_start"],
    }


def _marks(config: dict[str, Any]) -> None:
    """The Train function of the floor: nothing to train, nothing heavy to import; writes to
    ``config["out"]`` when its process started and when it ran (epoch seconds)."""
    import psutil  # a dependency of Ray's

    marks = {"process_start": psutil.Process().create_time(), "function_start": time.time()}
    Path(config["out"]).write_text(json.dumps(marks))


#: bytes of the checkpoint ``_time_reports`` attaches: a tiny-clip trial's (weights, best weights,
#: optimiser state), about 3 MB
CHECKPOINT_BYTES = 3 * 2**20


def _time_reports(config: dict[str, Any]) -> None:
    """Mean seconds of ``ray.train.report`` with ~70 metrics, alone and with a 3-MB checkpoint,
    0.5 s apart (a report waits for the controller to take the one before it)."""
    import ray.train

    metrics = {f"metric_{i}": float(i) for i in range(70)}
    spent = {"metrics_only": 0.0, "with_checkpoint": 0.0}
    reports = 10  # alternating: half of them of each kind
    for epoch in range(reports):
        kind = "with_checkpoint" if epoch % 2 else "metrics_only"
        with tempfile.TemporaryDirectory(prefix="overhead-ckpt-") as folder:
            checkpoint = None
            if kind == "with_checkpoint":  # report() copies it to the run's storage
                (Path(folder) / "state.bin").write_bytes(os.urandom(CHECKPOINT_BYTES))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            time.sleep(0.5)
            t0 = time.perf_counter()
            ray.train.report({**metrics, "epoch": epoch}, checkpoint=checkpoint)
            spent[kind] += time.perf_counter() - t0
    Path(config["out"]).write_text(json.dumps({k: v / (reports // 2) for k, v in spent.items()}))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--trials", type=int, default=2, help=f"K trials per size (1-{len(ALPHAS)})")
    p.add_argument(
        "--before",
        metavar="GIT_REF",
        help=f"also run the study with this commit's code, side by side (e.g. {BEFORE_REDUCTIONS})",
    )
    p.add_argument(
        "--floor-only",
        action="store_true",
        help="measure only Ray Train's floor (K bare fits and their phases); writes overhead_floor",
    )
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/)")
    p.add_argument("--plain", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--plain-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--floor-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


@contextlib.contextmanager
def worktree(ref: str, parent: Path) -> Iterator[Path]:
    """A detached git worktree of ``ref`` under ``parent``, removed afterwards."""
    path = parent / f"src-{ref[:12]}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
        )


@contextlib.contextmanager
def before_and_now(
    ref: str, space_text: Callable[[Path], str]
) -> Iterator[tuple[Path, dict[str, Path], Path]]:
    """A scratch folder, the two source trees to compare (``before``: a worktree of ``ref``,
    ``now``: this one) and the study file ``space_text(data folder)`` written there, with its
    dataset built (not timed, shared by every run of both)."""
    from study.search_space import load_search_spec
    from vlm2rec.data.prepare import ensure_dataset

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, worktree(ref, Path(tmp)) as before:
        work = Path(tmp)
        space = work / "space.toml"
        space.write_text(space_text(work / "data"))
        ensure_dataset(load_search_spec(space).base_config().data)
        yield work, {"before": before, "now": ROOT}, space


def main(argv: Sequence[str] | None = None) -> Path | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.plain:
        run_plain(args.plain, args.plain_out)
        return None
    if args.floor_out:
        run_floor(args.trials, args.floor_out)
        return None
    if not 1 <= args.trials <= len(ALPHAS):
        raise SystemExit(f"--trials: expected 1..{len(ALPHAS)}, got {args.trials}")
    with contextlib.ExitStack() as stack:
        work = args.work or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="overhead-"))
        )
        work = work.resolve()
        work.mkdir(parents=True, exist_ok=True)
        before = stack.enter_context(worktree(args.before, work)) if args.before else None
        floor = measure_floor(args.trials, work)
        print(
            f"Ray Train's floor: {floor['fit_s_mean']:.1f} s per TorchTrainer.fit(); a report "
            f"{floor['report_s']['metrics_only'] * 1e3:.0f} ms, with a 3-MB checkpoint "
            f"{floor['report_s']['with_checkpoint'] * 1e3:.0f} ms",
            "; per fit: " + ", ".join(f"{k} {v:.1f} s" for k, v in floor["phases_s_mean"].items()),
            flush=True,
        )
        if args.floor_only:
            return _write_floor(floor, argv, args.out)
        rows = []
        for size in args.sizes:
            what = f"the study at {args.before}, then now, then" if before else "the study, then"
            print(f"size {size}: {args.trials} trials through {what} plain fit", flush=True)
            rows.append(measure(size, args.trials, work, before))
            _print_table(rows[-1:])
    _print_table(rows)
    return _write(rows, floor, args, argv)


def _write_floor(floor: dict[str, Any], argv: Sequence[str], out: Path | None) -> Path:
    name = "Ray Train's floor: seconds per TorchTrainer.fit() of a function that returns at once"
    command = "python bench/overhead.py " + " ".join(argv)
    payload = {"setting": {"command": command}, "floor": floor}
    path = write_result(
        "overhead_floor", headline(name, floor["fit_s_mean"], "s"), payload, out=out
    )
    print(f"wrote {path}")
    return path


def _write(
    rows: list[dict[str, Any]], floor: dict[str, Any], args: argparse.Namespace, argv: Sequence[str]
) -> Path:
    row = next((r for r in rows if r["size"] == HEADLINE_SIZE), rows[0])
    first = row["study"]
    name = f"study wall / plain wall, {row['size']} trials (K = {args.trials})"
    head = headline(name, first["ratio"], "x")
    payload = {
        "setting": {
            "base": str(BASE.relative_to(ROOT)),
            "trials_per_size": args.trials,
            "alphas": list(ALPHAS[: args.trials]),
            "torch_threads": 1,
            "before": args.before or None,
            "command": "python bench/overhead.py " + " ".join(argv),
        },
        "floor": floor,
        "results": rows,
    }
    path = write_result("overhead", head, payload, out=args.out)
    print(f"wrote {path}")
    if args.before:
        print(f"before ({args.before}): {row['before']['ratio']:.2f}x")
    print(f"headline: {name} = {first['ratio']:.2f}x")
    return path


if __name__ == "__main__":
    main()
