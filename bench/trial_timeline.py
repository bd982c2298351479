r"""Where a trial's Ray Train run spends its time, from Ray's own timeline: before and now.

``bench/overhead.py`` times whole studies; this script looks inside each trial. It runs K 1-epoch
trials of ``overhead.py``'s smallest size (250 synthetic users, grid over ``loss.alpha``, one
Train worker of 1 CPU, one trial at a time) through ``run_search.py``, with Ray's task timeline
(``ray.timeline``) written just before the study shuts Ray down, once with the code of
``--before`` (a git worktree) and once with this tree's, alternately, ``--repeats`` times each.

Per Train run (one per trial), from the timeline's events (:func:`phases`):

* ``controller_init_s``: the ``TrainController`` actor's ``__init__``, most of it unpickling its
  arguments (which imports Train and torch in the new process);
* ``to_worker_s``: from the controller's ``run`` to the worker's first call (placement group,
  worker process start);
* ``worker_init_s``: the worker's ``init_train_context`` (its imports, Train's context);
* ``first_put_s``: the controller putting the run's first report on the study's report queue
  (``study/bridge.py``), which the controller waits for. ``None`` where the timeline lacks it:
  the queue lives as long as its trial process, which Tune kills at the study's end, within a
  second of the last trial's put, before the queue's actor sent its task events;
* ``run_s``: the controller's whole ``run``, start of the worker group to its end.

Headline: the mean ``run_s``, now / before. The JSON has every run's phases.

Usage::

    python bench/trial_timeline.py --before 44b4b35              # K = 3, 2 runs each, ~5 min
    python bench/trial_timeline.py --before HEAD --trials 1 --repeats 1 --out /tmp/t.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts, not a package: put it on the path so its modules import from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead
from common import headline, mean_std, write_result

PHASES = ("controller_init_s", "to_worker_s", "worker_init_s", "first_put_s", "run_s")
_US = 1e-6  # the timeline's times are microseconds


def _calls(events: Sequence[Mapping[str, Any]], method: str) -> list[Mapping[str, Any]]:
    """The completed calls of ``Class.method`` (an actor's task events), in time order."""
    cat = f"task::{method}"
    return sorted((e for e in events if e.get("ph") == "X" and e["cat"] == cat), key=_start)


def _start(event: Mapping[str, Any]) -> float:
    return float(event["ts"])


def _end(event: Mapping[str, Any]) -> float:
    return float(event["ts"]) + float(event["dur"])


def phases(events: Sequence[Mapping[str, Any]]) -> list[dict[str, float | None]]:
    """One dict of :data:`PHASES` per Train run, in order; trials must run one at a time (a
    run's worker call and report are the first ones inside its controller's ``run``)."""
    inits = {e["tid"]: e for e in _calls(events, "TrainController.__init__")}
    workers = _calls(events, "RayTrainWorker.init_train_context")
    puts = _calls(events, "_QueueActor.put")
    out = []
    for run in _calls(events, "TrainController.run"):
        worker = next(e for e in workers if _start(run) <= _start(e) <= _end(run))
        put = next((e for e in puts if _start(run) <= _start(e) <= _end(run)), None)
        out.append(
            {
                "controller_init_s": float(inits[run["tid"]]["dur"]) * _US,
                "to_worker_s": (_start(worker) - _start(run)) * _US,
                "worker_init_s": float(worker["dur"]) * _US,
                "first_put_s": None if put is None else float(put["dur"]) * _US,
                "run_s": float(run["dur"]) * _US,
            }
        )
    return out


def study_with_timeline(space: Path, storage: Path, timeline: Path) -> int:
    """``run_search.py`` of whichever ``study`` package comes first on the path, with Ray's
    timeline written just before the study shuts its Ray down."""
    import ray

    shutdown = ray.shutdown

    def timeline_then_shutdown(*args: Any, **kwargs: Any) -> None:
        if ray.is_initialized():
            ray.timeline(str(timeline))
        shutdown(*args, **kwargs)

    ray.shutdown = timeline_then_shutdown
    from study import run_search

    return run_search.main(["--space", str(space), "--storage", str(storage)])


def run(code: Path, space: Path, work: Path, name: str) -> dict[str, Any]:
    """One study by the source tree ``code``: its wall seconds and its Train runs' phases."""
    timeline = work / f"{name}.timeline.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--study", str(space)]
    cmd += [str(work / name), str(timeline)]
    wall = overhead._timed(cmd, work / f"{name}.log", code, overhead.source_env(code))
    return {"wall_s": wall, "runs": phases(json.loads(timeline.read_text()))}


def _mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and std of the values the timeline has (see ``first_put_s``)."""
    return mean_std([v for v in values if v is not None])


def summarise(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per code: mean and std of each phase over every Train run, and of the study wall."""
    out: dict[str, Any] = {}
    for code, studies in runs.items():
        every = [r for s in studies for r in s["runs"]]
        out[code] = {k: _mean_std(r[k] for r in every) for k in PHASES}
        out[code]["wall_s"] = mean_std([s["wall_s"] for s in studies])
    out["run_s_ratio"] = out["now"]["run_s"][0] / out["before"]["run_s"][0]
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--before", metavar="GIT_REF", help="the code to compare with")
    p.add_argument("--trials", type=int, default=3, help="K trials per study (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each code (default 2)")
    p.add_argument(
        "--out", type=Path, help="result file (default bench/results/trial_timeline.json)"
    )
    p.add_argument("--study", nargs=3, type=Path, help=argparse.SUPPRESS)  # SPACE STORAGE TIMELINE
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.study:
        raise SystemExit(study_with_timeline(*args.study))
    if args.before is None or not 1 <= args.trials <= len(overhead.ALPHAS) or args.repeats < 1:
        raise SystemExit(
            f"expected --before, --trials in 1..{len(overhead.ALPHAS)} and --repeats >= 1, "
            f"got {args.before}, {args.trials}, {args.repeats}"
        )
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "now": []}
    space_text = functools.partial(overhead.space_toml, "5s", args.trials)
    with overhead.before_and_now(args.before, space_text) as (work, codes, space):
        for i in range(args.repeats):
            for name, code in codes.items():
                r = run(code, space, work, f"{name}-{i}")
                print(
                    f"run {i + 1}/{args.repeats}, code {name}: {r['wall_s']:.1f} s; per Train run "
                    + ", ".join(f"{k} {_mean_std(t[k] for t in r['runs'])[0]:.2f}" for k in PHASES),
                    flush=True,
                )
                runs[name].append(r)
    summary = summarise(runs)
    for k in (*PHASES, "wall_s"):
        (b, sb), (n, sn) = summary["before"][k], summary["now"][k]
        print(f"{k:>18}: before {b:6.2f} ± {sb:.2f}   now {n:6.2f} ± {sn:.2f}")
    return write_result(
        "trial_timeline",
        headline(
            "Train run per trial (TrainController.run), now / before", summary["run_s_ratio"], "x"
        ),
        {
            "command": " ".join(["python bench/trial_timeline.py", *argv]),
            "before": args.before,
            "trials": args.trials,
            "repeats": args.repeats,
            "setting": {"size": "5s", **overhead.SIZES["5s"]},
            "summary": summary,
            "runs": runs,
        },
        out=args.out,
    )


if __name__ == "__main__":
    main()
