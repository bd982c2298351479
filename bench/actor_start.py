r"""Where a Ray actor starts, and what that costs: a prestarted idle worker or a new process.

A study trial starts about six actors (Tune's trial driver, Train's controller, its helper actors
and the worker), each in a Python process of its own. This script asks how much of that is the
process start, and whether Ray's prestarted idle workers, warmed by a setup hook, could take it.

Each variant runs in a fresh child process on a local Ray started the study's way (2 CPUs):

* ``plain``: nothing set;
* ``hook``: the job's ``runtime_env`` has a ``worker_process_setup_hook`` that imports torch, the
  way a study would warm its workers;
* ``prestart``: Ray's ``enable_worker_prestart`` system setting on.

In each, ``--actors`` N actors of one CPU are created one after another, 2 s apart, each killed
after one call; an actor counts as started when its first method call returns. The call reports
the actor's process id (matched against the ``ray::IDLE`` workers present before the first actor:
"prestarted") and whether torch was already imported in it (did the hook run there?).

Headline: a new process's start minus a prestarted worker's, in seconds (``plain``): at most what a
pool of warm workers could save per actor.

Usage::

    python bench/actor_start.py               # 6 actors per variant, ~2 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts, not a package: put it on the path so `common` imports from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import headline, machine, mean_std, write_result

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("plain", "hook", "prestart")


def _import_torch() -> None:
    """The setup hook of the ``hook`` variant: what a warm study worker would have imported."""
    import torch  # noqa: F401


def run_variant(variant: str, actors: int, out: Path) -> None:
    """Child process: start Ray for ``variant``, create ``actors`` actors, write what each did."""
    import psutil  # a dependency of Ray's
    import ray

    from study.tune_runner import start_local_ray, use_auth_mode

    use_auth_mode()
    hook = {"worker_process_setup_hook": _import_torch} if variant == "hook" else None
    system = {"enable_worker_prestart": True} if variant == "prestart" else {}
    start_local_ray(num_cpus=2, runtime_env=hook, _system_config=system, log_to_driver=False)

    @ray.remote(num_cpus=1)
    class Probe:
        def where(self) -> tuple[int, bool]:
            return os.getpid(), "torch" in sys.modules

    time.sleep(6)  # let Ray's prestarted workers come up before the first actor asks for one
    idle = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "ray::IDLE"}
    rows = []
    for _ in range(actors):
        t0 = time.perf_counter()
        probe = Probe.remote()
        pid, warm = ray.get(probe.where.remote())
        rows.append({"start_s": time.perf_counter() - t0, "prestarted": pid in idle, "torch": warm})
        ray.kill(probe)
        time.sleep(2)
    ray.shutdown()
    out.write_text(json.dumps({"idle_workers": len(idle), "actors": rows}) + "\n")


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and SD of the start time of the actors in prestarted workers and in new processes."""
    out: dict[str, Any] = {}
    for kind, prestarted in (("prestarted", True), ("new_process", False)):
        times = [r["start_s"] for r in rows if r["prestarted"] is prestarted]
        mean, std = mean_std(times)
        out[kind] = {"n": len(times), "mean_s": mean, "std_s": std}
    out["torch_already_imported"] = sum(r["torch"] for r in rows)
    return out


def main(argv: Sequence[str] | None = None) -> Path | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--actors", type=int, default=6, help="actors per variant (default 6)")
    p.add_argument("--out", type=Path, help="result file (default bench/results/actor_start.json)")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.variant:
        run_variant(args.variant, args.actors, args.child_out)
        return None
    variants: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="actor-start-") as tmp:
        for variant in VARIANTS:
            child = Path(tmp) / f"{variant}.json"
            cmd = [sys.executable, __file__, "--variant", variant, "--actors", str(args.actors)]
            subprocess.run([*cmd, "--child-out", str(child)], cwd=REPO, check=True)
            raw = json.loads(child.read_text())
            variants[variant] = {**raw, "summary": summarise(raw["actors"])}
            s = variants[variant]["summary"]
            print(
                f"{variant:<9} idle workers {raw['idle_workers']}: "
                f"prestarted {s['prestarted']['n']} x {s['prestarted']['mean_s']:.2f} s, "
                f"new process {s['new_process']['n']} x {s['new_process']['mean_s']:.2f} s, "
                f"torch already imported in {s['torch_already_imported']}/{args.actors}",
                flush=True,
            )
    plain = variants["plain"]["summary"]
    saving = plain["new_process"]["mean_s"] - plain["prestarted"]["mean_s"]
    print(f"new process - prestarted worker: {saving:.2f} s per actor ({machine()['cpu']})")
    return write_result(
        "actor_start",
        headline("new_process_minus_prestarted_s", saving, "s"),
        {"command": " ".join(["python bench/actor_start.py", *argv]), **variants},
        out=args.out,
    )


if __name__ == "__main__":
    main()
