r"""Does the study's searcher pay off? TPE + ASHA vs random search (+ ASHA) vs random search alone.

Three ways to spend the same budget of training epochs on the default study's space
(``search_spaces/default.toml``: ``loss.alpha``, ``loss.temperature``, ``loss.beta``):

* ``tpe_asha``: what ``run_search.py`` runs: the study's searcher (``study/searcher.py``: Ray Tune's
  ``OptunaSearch``, ASHA-stopped trials PRUNED) with optuna's TPE sampler and Tune's
  ``ASHAScheduler`` on ``epoch`` (the space's ``max_t``, ``grace_period``,
  ``reduction_factor``);
* ``random_asha``: the same, with optuna's random sampler;
* ``random``: random sampler, no scheduler (every trial trains ``max_t`` epochs);
* ``gp_asha`` and ``tpe`` (only with ``--methods``): optuna's GP sampler with ASHA; TPE without
  a scheduler;
* ``tpe_asha_complete`` (only with ``--methods``): TPE + ASHA through Ray's own ``OptunaSearch``,
  which stores an ASHA-stopped trial as COMPLETE with its last value, as the study did before
  ``StudySearcher``: what recording those trials PRUNED changes;
* ``tpe_asha_wide`` (only with ``--methods``): TPE + ASHA whose "good" group is the best quarter
  of the trials (``ceil(0.25 n)``) instead of Optuna's tenth (``default_gamma``), which is a
  single trial below 11.

Optuna 5's ``TPESampler`` is multivariate by default for a single objective (its
``multivariate=None``), so ``tpe_asha`` measures multivariate TPE. ``--startup-trials`` sets the
model-based samplers' random startup trials (the space's ``n_startup_trials`` otherwise).

The searcher and scheduler objects are built by the study's own helpers (``make_sampler``,
``to_tune_param_space``, ``make_scheduler``), so this measures the product's search. Trials run
one at a time in each Tune run (``max_concurrent_trials = 1``), which makes every run
deterministic: the sampler seed, the order of results ASHA sees and the trained models (CPU, fixed
``seed``) are all fixed. A trial trains in-process with ``vlm2rec.train.fit`` (one torch thread,
no Ray Train worker group: the searcher, not distributed training, is measured). ``--workers``
Tune runs go on at once on one local Ray instance.

Each Tune run stops when its trials have reported ``--budget`` epochs in all; the **best
val/ndcg@10 found** after ``b`` epochs is the best value any of the first ``b`` reported epochs
scored (the leaderboard ranks trials by their best epoch too). Seeds are sampler seeds: with the
same seed, ``random_asha`` and ``random`` draw the same configurations in the same order.

Headline: the fraction of the budget after which TPE + ASHA's mean best-so-far (over seeds) first
reaches random search's (with ASHA) final mean best; ``inf`` (``null`` in the JSON) means it never did.
``budget_fraction_interval`` gives its bootstrap 95% interval over the sampler seeds.

The result file is written after every finished Tune run (``runs_left`` lists the rest, and the
summary waits for the last); the same command run again, on the same kind of machine, takes the
runs it finds in its ``--out`` file (by :func:`run_key`) and runs only the rest.

Usage::

    python bench/hpo.py                                   # 3 methods x 5 seeds, 40 epochs each, ~95 min
    python bench/hpo.py --budget 6 --seeds 0 --users 60 --out /tmp/hpo.json   # smoke, ~1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts, not a package: put it on the path so `common` imports from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, git_sha, headline, machine, mean_std, write_result

from study.search_space import (
    Sampler,
    Scheduler,
    SearchSpec,
    load_search_spec,
    make_sampler,
    to_tune_param_space,
)
from vlm2rec.config import config_hash, parse_override, to_dict

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = ROOT / "search_spaces" / "default.toml"
#: method -> (optuna sampler, scheduler)
METHODS: dict[str, tuple[Sampler, Scheduler]] = {
    "tpe_asha": ("tpe", "asha"),
    "random_asha": ("random", "asha"),
    "random": ("random", "none"),
    "gp_asha": ("gp", "asha"),  # measured on request (--methods): not what the study runs
    "tpe": ("tpe", "none"),  # on request too
    "tpe_asha_complete": ("tpe", "asha"),  # on request too: stopped trials COMPLETE, not PRUNED
    "tpe_asha_wide": ("tpe", "asha"),  # on request too: TPE's good group a quarter of the trials
}
#: methods searched with Ray's ``OptunaSearch`` instead of the study's ``StudySearcher``
STOPPED_AS_COMPLETE = frozenset({"tpe_asha_complete"})
#: method -> the fraction of the trials TPE models as good (Optuna's default: 0.1, at most 25)
GOOD_FRACTION = {"tpe_asha_wide": 0.25}
DEFAULT_METHODS = ("tpe_asha", "random_asha", "random")
BASELINE = "random_asha"  #: the headline's reference: the same scheduler, a random sampler
METRIC = "val/ndcg@10"


# ----------------------------------------------------------------------------- the study to search


def bench_spec(args: argparse.Namespace) -> SearchSpec:
    """The space file with the bench's data size and extra overrides; its own dataset folder."""
    spec = load_search_spec(args.space)
    if spec.study.mode != "max":  # best_so_far and budget_to_reach take larger as better
        raise SystemExit(f"{args.space}: study.mode must be 'max' for bench/hpo.py")
    fixed = {**spec.fixed, "embedder.name": args.model}
    if args.users is not None:
        fixed["data.synthetic.users"] = args.users
    fixed.update(dict(parse_override(s) for s in args.set))
    synth = dataclasses.replace(spec, fixed=fixed).base_config().data.synthetic
    fixed["data.path"] = str(args.data_root.resolve() / f"bench-hpo-{config_hash(synth)}")
    given = {
        "grace_period": args.grace_period,
        "reduction_factor": args.reduction_factor,
        "n_startup_trials": args.startup_trials,
    }
    study = dataclasses.replace(spec.study, **{k: v for k, v in given.items() if v is not None})
    return dataclasses.replace(spec, fixed=fixed, study=study)


def method_spec(spec: SearchSpec, method: str, seed: int) -> SearchSpec:
    sampler, scheduler = METHODS[method]
    study = dataclasses.replace(spec.study, sampler=sampler, sampler_seed=seed, scheduler=scheduler)
    return dataclasses.replace(spec, study=study)


def numerics() -> dict[str, Any]:
    """What the trained models' floating point depends on besides the config: the CPU model
    (its kernels: with the same package versions, seed 0's first trial scored 0.5129 after 10
    epochs on the Intel Xeon of ``hpo.json`` and 0.4708 on an AMD EPYC, equal to 4 digits up to
    epoch 2) and the Python and package versions."""
    volatile = ("cores", "load_average_1_5_15", "os", "git_sha")
    return {k: v for k, v in machine().items() if k not in volatile}


def run_key(
    spec: SearchSpec, method: str, seed: int, budget: int, platform: Mapping[str, Any]
) -> str:
    """A 12-hex digest of what decides one run's reports: the resolved run config (its dataset
    folder by name, so another checkout agrees), the study settings and searched params of this
    method and seed, how the method searches, the budget and the ``platform`` (:func:`numerics`)."""
    s = method_spec(spec, method, seed)
    config = to_dict(s.base_config())
    config["data"]["path"] = Path(config["data"]["path"]).name
    what = [config, to_dict(s.study), [to_dict(p) for p in s.params], _method_setting(method)]
    blob = json.dumps([*what, budget, platform], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- one Tune run (child)


def hpo_trial(params: dict[str, Any], base: dict[str, Any], threads: int) -> None:
    """Tune function trainable: ``fit`` the base config overridden by ``params``, one report per epoch."""
    import ray.tune
    import torch

    from vlm2rec.config import apply_overrides, from_dict
    from vlm2rec.train import fit

    class TuneReporter:
        def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Any) -> None:
            ray.tune.report(dict(metrics))

    torch.set_num_threads(threads)
    plain = {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}
    with tempfile.TemporaryDirectory(prefix="bench-hpo-") as ckpt:
        fit(apply_overrides(from_dict(base), plain), reporter=TuneReporter(), checkpoint_root=ckpt)


def good_group(fraction: float, n: int) -> int:
    """TPE's ``gamma``: how many of ``n`` trials form the good group (Optuna's form, another fraction)."""
    return min(math.ceil(fraction * n), 25)


def searcher(spec: SearchSpec, method: str) -> Any:
    """The study's searcher with the study's sampler, except for two ablations: Ray's own
    ``OptunaSearch`` for :data:`STOPPED_AS_COMPLETE`, a TPE of another good group for
    :data:`GOOD_FRACTION`."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from study.searcher import StudySearcher

    if method in GOOD_FRACTION:
        sampler = optuna.samplers.TPESampler(
            seed=spec.study.sampler_seed,
            n_startup_trials=spec.study.startup_trials,
            gamma=functools.partial(good_group, GOOD_FRACTION[method]),
        )
    else:
        sampler = make_sampler(spec)
    cls = OptunaSearch if method in STOPPED_AS_COMPLETE else StudySearcher
    return cls(metric=spec.study.metric, mode=spec.study.mode, sampler=sampler)


def tune_run(
    spec: SearchSpec, method: str, name: str, budget: int, storage: Path
) -> list[dict[str, Any]]:
    """One Tune run until ``budget`` epochs are reported; every report as ``{trial, epoch, value, params}``."""
    from ray import tune

    from study.tune_runner import make_scheduler

    s = spec.study
    reports: list[dict[str, Any]] = []

    class Record(tune.Callback):
        def on_trial_result(
            self, iteration: int, trials: Any, trial: Any, result: dict, **info: Any
        ) -> None:
            params = {k: v.item() if hasattr(v, "item") else v for k, v in trial.config.items()}
            reports.append(
                {
                    "trial": trial.trial_id,
                    "epoch": int(result["epoch"]),
                    "value": float(result[s.metric]),
                    "params": params,
                }
            )

    class EpochBudget(tune.Stopper):
        """Stop the whole run once ``budget`` epochs (= reports) are spent."""

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return len(reports) >= budget

    trainable = tune.with_parameters(hpo_trial, base=to_dict(spec.base_config()), threads=1)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": 1}),
        param_space=to_tune_param_space(spec),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=searcher(spec, method),
            scheduler=make_scheduler(s),
            num_samples=budget,  # every trial spends >= 1 epoch: the budget runs out first
            max_concurrent_trials=1,
            reuse_actors=True,  # one trial process per run: torch and the model stack load once
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            stop=EpochBudget(),
            callbacks=[Record()],
            verbose=0,
        ),
    )
    tuner.fit()
    return reports[:budget]


def run_child(args: argparse.Namespace) -> None:
    import ray

    method, seed = args.child.split(":")
    spec = method_spec(bench_spec(args), method, int(seed))
    ray.init(address=args.address, logging_level=logging.WARNING)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-hpo-tune-") as storage:
        reports = tune_run(spec, method, f"{method}-s{seed}", args.budget, Path(storage))
    record = {
        "method": method,
        "seed": int(seed),
        "wall_s": time.perf_counter() - t0,
        "reports": reports,
    }
    args.child_out.write_text(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- analysis (pure)


def best_so_far(reports: Sequence[Mapping[str, Any]], budget: int) -> list[float]:
    """``curve[b - 1]`` = best (largest) value among the first ``b`` reports; carried flat past the
    last report."""
    curve: list[float] = []
    for r in reports[:budget]:
        curve.append(r["value"] if not curve else max(curve[-1], r["value"]))
    return curve + [curve[-1] if curve else math.nan] * (budget - len(curve))


def budget_to_reach(curve: Sequence[float], target: float) -> float:
    """Fraction of the budget after which ``curve`` first reaches ``target`` (max mode); inf if never."""
    for b, value in enumerate(curve, start=1):
        if value >= target - 1e-12:
            return b / len(curve)
    return math.inf


def trial_counts(reports: Sequence[Mapping[str, Any]], max_t: int) -> dict[str, int]:
    """Trials started, and trials that trained all ``max_t`` epochs, within the budget."""
    last: dict[str, int] = {}
    for r in reports:
        last[r["trial"]] = max(last.get(r["trial"], 0), r["epoch"])
    return {"trials": len(last), "full_trials": sum(e >= max_t for e in last.values())}


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """The mean over seeds of equally long best-so-far curves, budget step by budget step."""
    return [sum(c[b] for c in curves) / len(curves) for b in range(len(curves[0]))]


def fraction_interval(
    curves: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    draws: int = 2000,
    seed: int = 0,
) -> dict[str, float | None]:
    """Bootstrap 95% interval of the budget fraction ``curves``' mean needs to reach the mean final
    best of ``reference``: both sets of sampler seeds are resampled with replacement, independently
    (seed ``s`` of one method has nothing in common with seed ``s`` of another). A draw that never
    reaches its target counts as ``inf``; a bound that is ``inf`` is ``None`` in the JSON."""
    import random

    rng = random.Random(seed)
    fractions = []
    for _ in range(draws):
        picked = rng.choices(curves, k=len(curves))
        target = sum(c[-1] for c in rng.choices(reference, k=len(reference))) / len(reference)
        fractions.append(budget_to_reach(mean_curve(picked), target))
    fractions.sort()
    low, high = fractions[int(0.025 * draws)], fractions[int(0.975 * draws) - 1]
    reached = sum(math.isfinite(f) for f in fractions) / draws
    return {
        "low": low if math.isfinite(low) else None,
        "high": high if math.isfinite(high) else None,
        "draws_reached": reached,
    }


def summarise(records: Sequence[Mapping[str, Any]], budget: int, max_t: int) -> dict[str, Any]:
    """Per method: mean best-so-far curve over seeds, final best mean/std, trial counts."""
    out: dict[str, Any] = {}
    methods = dict.fromkeys(r["method"] for r in records)
    curves_of = {
        m: [best_so_far(r["reports"], budget) for r in records if r["method"] == m] for m in methods
    }
    for method, curves in curves_of.items():
        runs = [r for r in records if r["method"] == method]
        counts = [trial_counts(r["reports"], max_t) for r in runs]
        final_mean, final_std = mean_std([c[-1] for c in curves])
        out[method] = {
            "seeds": [r["seed"] for r in runs],
            "final_best_mean": final_mean,
            "final_best_std": final_std,
            "final_best_per_seed": [c[-1] for c in curves],
            "mean_curve": mean_curve(curves),
            "trials_mean": sum(c["trials"] for c in counts) / len(counts),
            "full_trials_mean": sum(c["full_trials"] for c in counts) / len(counts),
        }
    for method, row in out.items():  # how fast each method gets to each other method's final best
        others = [other for other in out if other != method]
        row["budget_fraction_to_reach"] = {
            other: budget_to_reach(row["mean_curve"], out[other]["final_best_mean"])
            for other in others
        }
        row["budget_fraction_interval"] = {
            other: fraction_interval(curves_of[method], curves_of[other]) for other in others
        }
    return out


def _print_table(summary: Mapping[str, Any], budget: int) -> None:
    marks = sorted({max(1, round(budget * f)) for f in (0.1, 0.25, 0.5, 0.75, 1.0)})
    print(f"\nbest {METRIC} found (mean over seeds) after b of {budget} epochs")
    print(
        f"{'method':<12} "
        + " ".join(f"{'b=' + str(b):>7}" for b in marks)
        + f" {'final ± std':>15} {'trials':>7} {'full':>5}"
    )
    for method, row in summary.items():
        curve = " ".join(f"{row['mean_curve'][b - 1]:>7.4f}" for b in marks)
        final = f"{row['final_best_mean']:.4f} ± {row['final_best_std']:.4f}"
        print(
            f"{method:<12} {curve} {final:>15} {row['trials_mean']:>7.1f} {row['full_trials_mean']:>5.1f}"
        )


# ----------------------------------------------------------------------------- driver


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--space", type=Path, default=DEFAULT_SPACE, help="study TOML whose params are searched"
    )
    p.add_argument(
        "--budget", type=int, default=40, help="epochs per Tune run (all trials together)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="sampler seeds")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    p.add_argument(
        "--users", type=int, default=None, help="synthetic users (default: the space's data)"
    )
    p.add_argument(
        "--model", default="tiny-clip", help="embedder.name (tiny-clip: 2x tiny-qwen2vl's speed)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra [fixed] override"
    )
    p.add_argument(
        "--grace-period", type=int, default=None, help="ASHA grace period (default: the space's)"
    )
    p.add_argument(
        "--reduction-factor",
        type=float,
        default=None,
        help="ASHA reduction factor (default: the space's)",
    )
    p.add_argument(
        "--startup-trials",
        type=int,
        default=None,
        help="random trials before TPE/GP model the landscape (default: the space's)",
    )
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        metavar="JSON",
        help="an earlier hpo result: the runs of the methods not in --methods are taken from it",
    )
    p.add_argument("--workers", type=int, default=2, help="Tune runs at once (one CPU each)")
    p.add_argument("--data-root", type=Path, default=ROOT / "data", help="where the data is built")
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "hpo.json",
        help="result JSON, written after every run; its finished runs are taken, not rerun",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _launch(
    argv: Sequence[str], method: str, seed: int, address: str, work: Path, key: str
) -> dict[str, Any]:
    """One method and seed in a child process: its record, stamped with ``key`` and the commit."""
    out, log = work / f"{method}-s{seed}.json", work / f"{method}-s{seed}.log"
    cmd = [
        sys.executable,
        __file__,
        *argv,
        "--child",
        f"{method}:{seed}",
        "--address",
        address,
        "--child-out",
        str(out),
    ]
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} exited {proc.returncode}; see {log}")
    record = {**json.loads(out.read_text()), "key": key, "git_sha": git_sha()}
    _print_run(record)
    return record


def _print_run(record: Mapping[str, Any], note: str = "") -> None:
    best = max(r["value"] for r in record["reports"])
    print(
        f"  {record['method']:<17} seed {record['seed']}: best {best:.4f}, "
        f"{len(record['reports'])} epochs, {record['wall_s']:.0f} s{note}",
        flush=True,
    )


def _method_setting(method: str) -> dict[str, str]:
    setting = dict(zip(("sampler", "scheduler"), METHODS[method], strict=True))
    if method in STOPPED_AS_COMPLETE:
        setting["stopped_trials"] = "complete"
    if method in GOOD_FRACTION:
        setting["good_fraction"] = str(GOOD_FRACTION[method])
    return setting


def _setting(args: argparse.Namespace, spec: SearchSpec, argv: Sequence[str]) -> dict[str, Any]:
    """What the result file records about how the runs were set up."""
    s = spec.study
    return {
        "space": str(Path(args.space).resolve().relative_to(ROOT)),
        "fixed": dict(spec.fixed),
        "asha": {
            "max_t": s.max_t,
            "grace_period": s.grace_period,
            "reduction_factor": s.reduction_factor,
        },
        "startup_trials": s.startup_trials,
        "budget_epochs": args.budget,
        "seeds": args.seeds,
        "methods": {m: _method_setting(m) for m in args.methods},
        "reused_from": str(args.reuse) if args.reuse else None,
        "command": "python bench/hpo.py " + " ".join(argv),
    }


def reused_runs(path: Path, setting: Mapping[str, Any], run: Sequence[str]) -> list[dict[str, Any]]:
    """The runs in ``path`` of the methods not in ``run``, refused (SystemExit) unless they were
    made with what decides their values: the same fixed overrides, budget and seeds, the same ASHA
    settings for a method that uses ASHA and the same startup trials for a model-based sampler."""
    old = json.loads(path.read_text())
    was = old["setting"]
    for key in ("fixed", "budget_epochs", "seeds"):
        if was[key] != setting[key]:
            raise SystemExit(
                f"--reuse {path}: setting.{key} is {was[key]!r}, this run has {setting[key]!r}"
            )
    methods = [m for m in was["methods"] if m not in run]
    for m in methods:
        if was["methods"][m]["scheduler"] == "asha" and was["asha"] != setting["asha"]:
            raise SystemExit(
                f"--reuse {path}: {m} ran with ASHA {was['asha']}, this run has {setting['asha']}"
            )
        startup = was.get("startup_trials")  # None: a file from before it was recorded
        if was["methods"][m]["sampler"] != "random" and startup != setting["startup_trials"]:
            raise SystemExit(
                f"--reuse {path}: {m} ran with {startup} startup trials, this run has "
                f"{setting['startup_trials']}"
            )
    return [r for r in old["runs"] if r["method"] in methods]


def _run_cells(
    argv: Sequence[str], workers: int, keys: Mapping[tuple[str, int], str]
) -> Iterator[dict[str, Any]]:
    """The Tune runs of ``keys``' cells, ``workers`` at a time on one local Ray, each record as
    its run ends. After a failed run the runs not yet started are dropped, those under way end
    (and are yielded), and then the failure is raised."""
    import ray

    from study.tune_runner import ensure_private_token, use_auth_mode

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    use_auth_mode()  # the study's token setting, and a token file only this user can read
    ensure_private_token()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
    address = ray.get_runtime_context().gcs_address
    work = Path(tempfile.mkdtemp(prefix="bench-hpo-"))  # kept: a failed run's log is named
    print(f"child logs: {work}", flush=True)
    failed: list[BaseException] = []
    try:
        with futures.ThreadPoolExecutor(workers) as pool:
            jobs = [pool.submit(_launch, argv, *c, address, work, k) for c, k in keys.items()]
            for job in futures.as_completed(jobs):
                if job.cancelled():
                    continue
                if job.exception() is None:
                    yield job.result()
                    continue
                failed.append(job.exception())  # type: ignore[arg-type]
                for other in jobs:
                    other.cancel()
    finally:
        ray.shutdown()
    if failed:
        raise failed[0]


def earlier_runs(path: Path) -> dict[str, dict[str, Any]]:
    """The runs of an earlier result file at ``path``, by :func:`run_key` (none without one)."""
    if not path.exists():
        return {}
    return {r["key"]: r for r in json.loads(path.read_text())["runs"] if "key" in r}


HEADLINE = f"budget fraction TPE + ASHA needs to reach {BASELINE}'s final best {METRIC}"


def _headline_value(summary: Mapping[str, Any] | None) -> float:
    if summary is None or not {"tpe_asha", BASELINE} <= set(summary):
        return math.nan
    return summary["tpe_asha"]["budget_fraction_to_reach"][BASELINE]


def _write(
    out: Path,
    setting: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    left: Sequence[str],
    extra: Mapping[str, Any],
) -> tuple[Path, dict[str, Any] | None]:
    """The result file as it stands; the summary and headline once no run is left."""
    records = sorted(records, key=lambda r: (r["seed"], list(METHODS).index(r["method"])))
    budget, max_t = setting["budget_epochs"], setting["asha"]["max_t"]
    summary = None if left else summarise(records, budget, max_t)
    head = headline(HEADLINE, _headline_value(summary), "fraction")
    payload = {"setting": setting, **extra, "runs_left": list(left), "summary": summary}
    return write_result("hpo", head, {**payload, "runs": records}, out=out), summary


def main(argv: Sequence[str] | None = None) -> Path | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.child:
        run_child(args)
        return None
    from vlm2rec.data.prepare import ensure_dataset

    spec = bench_spec(args)
    setting = _setting(args, spec, argv)
    reused = reused_runs(args.reuse, setting, args.methods) if args.reuse else []
    for m in dict.fromkeys(r["method"] for r in reused):
        setting["methods"][m] = _method_setting(m)
    ensure_dataset(spec.base_config().data)  # build once, before the runs race
    platform = numerics()
    keys = {
        (m, s): run_key(spec, m, s, args.budget, platform) for s in args.seeds for m in args.methods
    }
    earlier = earlier_runs(args.out)
    kept = [earlier[k] for k in keys.values() if k in earlier]
    todo = {cell: k for cell, k in keys.items() if k not in earlier}
    print(
        f"{len(keys)} Tune runs of {args.budget} epochs, {args.workers} at a time; "
        f"{len(kept)} finished earlier, taken from {args.out}",
        flush=True,
    )
    for record in kept:
        _print_run(record, " (kept)")
    t0 = time.perf_counter()
    records, left = [*reused, *kept], dict(todo)

    def write() -> tuple[Path, dict[str, Any] | None]:
        # wall_s: this invocation's, runs taken from earlier ones not counted
        extra = {"wall_s": round(time.perf_counter() - t0, 1), "kept_runs": len(kept)}
        return _write(args.out, setting, records, [f"{m}-s{s}" for m, s in left], extra)

    for record in _run_cells(argv, args.workers, todo) if todo else []:
        records.append(record)
        del left[(record["method"], record["seed"])]
        write()
    path, summary = write()
    assert summary is not None  # no run left
    _print_table(summary, args.budget)
    print(f"wrote {path}; total wall {time.perf_counter() - t0:.0f} s")
    print(f"headline: {HEADLINE} = {_headline_value(summary):.2f}")
    if {"tpe_asha", BASELINE} <= set(summary):
        ci = summary["tpe_asha"]["budget_fraction_interval"][BASELINE]
        print(f"95% bootstrap interval over sampler seeds: {ci['low']} .. {ci['high']}")
    return path


if __name__ == "__main__":
    main()
