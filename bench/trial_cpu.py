r"""Where a study's CPU goes, process by process, and how busy the machine's cores are meanwhile.

``bench/overhead.py`` measures a trial's fixed cost in wall time. This script asks what that time
is made of: CPU work that Ray's processes do beside the training (which more cores would absorb),
or a chain of steps waiting on each other (process starts, imports, RPCs: which they would not).

The same study as ``overhead.py``'s (``--size``: one of its sizes, K = ``--trials`` grid trials,
one at a time, one Ray Train worker of one CPU each, no scheduler) runs twice, one after the other:

* **plain**: ``python bench/overhead.py --plain``: the K runs by ``vlm2rec.train.fit`` in one
  process, no Ray;
* **study**: ``python study/run_search.py`` on a local Ray.

During each run a thread reads, every 0.2 s, the CPU time (user + system) and the title of every
process that started since the run began, and keeps the largest CPU time seen. Ray titles an
actor's process ``ray::<Class>``; processes are grouped by that role (:func:`role`). A process
that ends between two samples loses at most its last 0.2 s (the kernel's count of reaped
children cannot stand in: Ray's worker processes are not reaped by the process that started the
study). The sampler's own CPU time is in the JSON (``sampler_cpu_s``).

Headline: the share of the machine's cores the study kept busy, CPU seconds / (cores x wall). The
JSON also has the extra CPU and the extra wall time per trial, study minus plain, over K.

Usage::

    python bench/trial_cpu.py                    # 25-s trials, K = 2, ~2 min
    python bench/trial_cpu.py --size 5s --trials 1 --out /tmp/trial_cpu.json   # smoke, ~1 min
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil  # a dependency of Ray's

# bench/ is a folder of scripts, not a package: put it on the path so its modules import from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead
from common import headline, machine, write_result

#: how often the sampler reads every process's CPU time
SAMPLE_S = 0.2
#: Ray's own processes that are not actors, by a word of their command line
DAEMONS = ("raylet", "gcs_server", "log_monitor", "dashboard", "monitor.py", "runtime_env")


def role(cmdline: str) -> str:
    """What a process is: ``ray::<Class>`` for a Ray worker (an actor, or ``ray::IDLE``), the
    daemon's name for Ray's own processes, ``run_search.py`` for the study's driver."""
    actor = re.match(r"ray::([A-Za-z_][\w]*)", cmdline)
    if actor:
        return f"ray::{actor.group(1)}"
    if "run_search.py" in cmdline:
        return "run_search.py"
    if "multiprocessing.forkserver" in cmdline or "ray-dashboard-" in cmdline:
        return "dashboard modules"  # the dashboard's head modules run in forked processes
    for daemon in DAEMONS:
        if daemon in cmdline:
            return daemon
    return "other"


class CpuSampler:
    """Every process that appears while it runs: its role and the largest CPU time seen."""

    def __init__(self) -> None:
        self._before = set(psutil.pids())
        self.seen: dict[int, tuple[str, float]] = {}
        self.own_cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        for proc in psutil.process_iter():
            if proc.pid in self._before:
                continue
            try:
                cpu = proc.cpu_times()
                title = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
            old_title, old_cpu = self.seen.get(proc.pid, ("", 0.0))
            # A Ray worker is ray::IDLE until it holds an actor or runs a task, and a task's
            # worker goes back to ray::IDLE after it: the role is the last busy title.
            if old_title.startswith("ray::") and role(title) == "ray::IDLE":
                title = old_title
            self.seen[proc.pid] = (title, max(old_cpu, cpu.user + cpu.system))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()
        self.own_cpu_s = time.thread_time()

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def by_role(seen: Mapping[int, tuple[str, float]]) -> dict[str, dict[str, float]]:
    """CPU seconds and process count per role, the largest CPU first."""
    cpu: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter[str] = collections.Counter()
    for title, seconds in seen.values():
        name = role(title)
        cpu[name] += seconds
        count[name] += 1
    order = sorted(cpu, key=lambda r: -cpu[r])
    return {r: {"cpu_s": cpu[r], "processes": count[r]} for r in order}


def sampled_run(cmd: list[str], log: Path) -> dict[str, Any]:
    """``overhead.py``'s timed run of ``cmd`` (output in ``log``) with the sampler beside it: wall
    seconds, CPU seconds of every process that started meanwhile, and those per role."""
    with CpuSampler() as sampler:
        wall = overhead._timed(cmd, log)
    roles = by_role(sampler.seen)
    cpu = sum(r["cpu_s"] for r in roles.values())
    return {"wall_s": wall, "cpu_s": cpu, "sampler_cpu_s": sampler.own_cpu_s, "roles": roles}


def summarise(
    trials: int, cores: int, plain: Mapping[str, Any], study: Mapping[str, Any]
) -> dict[str, float]:
    """What the study adds per trial, in CPU and in wall time, and how busy it kept the cores."""
    return {
        "cores_busy": study["cpu_s"] / (cores * study["wall_s"]),
        "extra_cpu_s_per_trial": (study["cpu_s"] - plain["cpu_s"]) / trials,
        "extra_wall_s_per_trial": (study["wall_s"] - plain["wall_s"]) / trials,
    }


def measure(size: str, trials: int, work: Path) -> dict[str, Any]:
    """Plain, then the study with the sampler, on a dataset built before either."""
    from study.search_space import load_search_spec
    from vlm2rec.data.prepare import ensure_dataset

    space = work / f"trial-cpu-{size}.toml"
    space.write_text(overhead.space_toml(size, trials, work / "data"))
    ensure_dataset(load_search_spec(space).base_config().data)
    plain_cmd = [sys.executable, "bench/overhead.py", "--plain", str(space)]
    print(f"size {size}: {trials} trials by plain fit, then through run_search.py", flush=True)
    plain = sampled_run([*plain_cmd, "--plain-out", str(work / "plain.json")], work / "plain.log")
    study_cmd = [sys.executable, "study/run_search.py", "--space", str(space)]
    study = sampled_run([*study_cmd, "--storage", str(work / "studies")], work / "study.log")
    return {"plain": plain, "study": study}


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size", default="25s", choices=list(overhead.SIZES))
    p.add_argument("--trials", type=int, default=2, help="K grid trials (default 2)")
    p.add_argument("--out", type=Path, help="result file (default bench/results/trial_cpu.json)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if not 1 <= args.trials <= len(overhead.ALPHAS):
        raise SystemExit(f"--trials: expected 1..{len(overhead.ALPHAS)}, got {args.trials}")
    with tempfile.TemporaryDirectory(prefix="trial-cpu-") as tmp:
        runs = measure(args.size, args.trials, Path(tmp))
    host = machine()
    summary = summarise(args.trials, host["cores"], runs["plain"], runs["study"])
    for name, r in runs["study"]["roles"].items():
        print(f"{r['cpu_s']:7.2f} CPU-s  {int(r['processes']):3d} x {name}")
    plain, study = runs["plain"], runs["study"]
    print(
        f"plain {plain['wall_s']:.1f} s wall / {plain['cpu_s']:.1f} CPU-s; study "
        f"{study['wall_s']:.1f} s wall / {study['cpu_s']:.1f} CPU-s. Per trial the study adds "
        f"{summary['extra_wall_s_per_trial']:.1f} s wall and {summary['extra_cpu_s_per_trial']:.1f} "
        f"CPU-s; it kept {summary['cores_busy']:.0%} of {host['cores']} cores busy ({host['cpu']})"
    )
    return write_result(
        "trial_cpu",
        headline("cores_busy_during_study", summary["cores_busy"], "fraction"),
        {
            "command": " ".join(["python bench/trial_cpu.py", *argv]),
            "size": args.size,
            "trials": args.trials,
            "knobs": overhead.SIZES[args.size],
            "summary": summary,
            **runs,
        },
        out=args.out,
    )


if __name__ == "__main__":
    main()
