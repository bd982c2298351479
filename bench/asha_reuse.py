r"""What a study with ASHA saves when its trials reuse their Tune processes: one search, before and now.

``bench/overhead.py`` measures studies without early stopping, whose trials have reused their Tune
trial process since an earlier round. This script measures the search the default study runs:
ASHA stops trials, and a stopped trial's process now runs the next trial once its Train run is
aborted (``study/bridge.py``), where before every trial started a new one.

The study (:func:`space_toml`): K trials drawn by the random sampler (seed 0) over ``loss.alpha``,
250 synthetic users and 4 epochs at most, ASHA from epoch 1 with reduction factor 2, and per
trial a Tune driver and one Ray Train worker of 0.5 CPU each (one torch thread), as in the
default study. One trial runs at a time, so ASHA sees the reports in the same order in every
run and stops the same trials. It runs through ``run_search.py`` with the code of
``--before`` (checked out in a git worktree) and with this tree's, alternately, ``--repeats``
times each, on a dataset built before any of them.

Per run: the wall time around the process, Tune's phase, every trial's status, epochs and metric,
and the number of Tune trial processes (``ImplicitFunc`` actors) Ray started, counted in the
session's worker logs. The script checks that both codes ran the same trials to the same values.

Headline: mean study wall, now / before. The JSON also has the seconds saved per trial.

Usage::

    python bench/asha_reuse.py --before 9bfad74     # K = 8, 2 runs of each, ~14 min
    python bench/asha_reuse.py --before 9bfad74 --trials 3 --repeats 1 --out /tmp/r.json  # ~3 min
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts, not a package: put it on the path so its modules import from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead
from common import headline, mean_std, write_result

USERS, EPOCHS = 250, 4
NAME = "asha-reuse"
#: the header line of run_search.py that names Ray's session logs
_SESSION_LOGS = re.compile(r"(\S+/session_[^/\s]+/logs) \(workers\)")


def space_toml(trials: int, data_root: Path) -> str:
    """The study file: K random trials, ASHA from epoch 1, one trial at a time, one worker."""
    lines = [
        f'base = "{overhead.BASE}"',
        "[study]",
        f'name = "{NAME}"',
        f'metric = "{overhead.METRIC}"',
        f"num_samples = {trials}",
        'sampler = "random"',
        "sampler_seed = 0",
        'scheduler = "asha"',
        f"max_t = {EPOCHS}",
        "grace_period = 1",
        "reduction_factor = 2",
        "workers_per_trial = 1",
        "cpus_per_worker = 0.5  # the default study's trial: 0.5 CPU driver + 0.5 CPU worker",
        "max_concurrent_trials = 1  # the same reports in the same order: the same stops",
        "reference = false",
        "[fixed]",
        f'"data.path" = "{data_root / f"asha-u{USERS}"}"',
        f'"data.synthetic.users" = {USERS}',
        f'"train.epochs" = {EPOCHS}',
        '"train.batch_size" = 64',
        '[params."loss.alpha"]',
        'type = "float"',
        "low = 0.05",
        "high = 4.0",
        "log = true",
    ]
    return "\n".join(lines) + "\n"


def trial_processes(log: str) -> int | None:
    """How many Tune trial processes the run's Ray started (None: its logs were not found)."""
    found = _SESSION_LOGS.search(log)
    if found is None or not Path(found.group(1)).is_dir():
        return None
    outs = Path(found.group(1)).glob("worker-*.out")
    return sum(":actor_name:ImplicitFunc" in p.read_text(errors="replace") for p in outs)


def run(code: Path, space: Path, storage: Path, log: Path) -> dict[str, Any]:
    """One study run by ``code``: wall and Tune seconds, trial processes, the trials."""
    import pyarrow.parquet as pq

    wall = overhead.run_search(code, space, storage, log)
    folder = storage / NAME
    rows = pq.read_table(folder / "leaderboard.parquet").to_pylist()
    keys = ("status", "epochs", overhead.METRIC, "param.loss.alpha")
    return {
        "wall_s": wall,
        "tune_s": float(json.loads((folder / "study_done.json").read_text())["wall_s"]),
        "trial_processes": trial_processes(log.read_text()),
        "trials": sorted(({k: r[k] for k in keys} for r in rows), key=lambda t: t[keys[-1]]),
    }


def summarise(trials: int, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Mean and std of each code's wall and Tune seconds; what now saves per trial."""
    out: dict[str, Any] = {}
    for code, rs in runs.items():
        wall, tune = mean_std([r["wall_s"] for r in rs]), mean_std([r["tune_s"] for r in rs])
        out[code] = {"wall_s": wall, "tune_s": tune, "trial_processes": rs[0]["trial_processes"]}
    before, now = out["before"]["wall_s"][0], out["now"]["wall_s"][0]
    out["ratio"] = now / before
    out["saved_s_per_trial"] = (before - now) / trials
    return out


def same_trials(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> float:
    """The largest metric difference between any two runs' trials; raises if their statuses,
    epochs or parameters differ (then the two codes did not run the same study)."""
    every = [r["trials"] for rs in runs.values() for r in rs]
    first = every[0]
    diff = 0.0
    same = ("status", "epochs", "param.loss.alpha")
    for trials in every[1:]:
        for a, b in zip(first, trials, strict=True):
            if [a[k] for k in same] != [b[k] for k in same]:
                raise RuntimeError(f"the runs differ: {a} vs {b}")
            diff = max(diff, abs(a[overhead.METRIC] - b[overhead.METRIC]))
    return diff


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--before", metavar="GIT_REF", required=True, help="the code to compare with")
    p.add_argument("--trials", type=int, default=8, help="K trials per study (default 8)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each code (default 2)")
    p.add_argument("--out", type=Path, help="result file (default bench/results/asha_reuse.json)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.trials < 2 or args.repeats < 1:
        raise SystemExit(
            f"expected --trials >= 2 and --repeats >= 1, got {args.trials}, {args.repeats}"
        )
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "now": []}
    space_text = functools.partial(space_toml, args.trials)
    with overhead.before_and_now(args.before, space_text) as (work, codes, space):
        for i in range(args.repeats):
            for name, code in codes.items():
                print(
                    f"run {i + 1}/{args.repeats}: {args.trials} trials with the code {name}",
                    flush=True,
                )
                r = run(code, space, work / f"{name}-{i}", work / f"{name}-{i}.log")
                print(
                    f"  {r['wall_s']:.1f} s wall, Tune {r['tune_s']:.1f} s, "
                    f"{r['trial_processes']} trial processes",
                    flush=True,
                )
                runs[name].append(r)
    summary = summarise(args.trials, runs)
    diff = same_trials(runs)
    print(
        f"now / before: {summary['ratio']:.3f}x study wall; {summary['saved_s_per_trial']:.1f} s "
        f"saved per trial; trial processes {summary['before']['trial_processes']} -> "
        f"{summary['now']['trial_processes']}; largest metric difference {diff:.1e}"
    )
    return write_result(
        "asha_reuse",
        headline("study wall, now / before (ASHA, reused trial processes)", summary["ratio"], "x"),
        {
            "command": " ".join(["python bench/asha_reuse.py", *argv]),
            "before": args.before,
            "trials": args.trials,
            "repeats": args.repeats,
            "setting": {"users": USERS, "epochs": EPOCHS, "grace_period": 1, "reduction_factor": 2},
            "max_abs_metric_diff": diff,
            "summary": summary,
            "runs": runs,
        },
        out=args.out,
    )


if __name__ == "__main__":
    main()
