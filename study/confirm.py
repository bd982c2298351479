r"""Confirm a study's winners on fresh seeds: mean ± 95% CI and a paired test against the reference.

    python study/confirm.py STUDY_DIR [--top K] [--seeds N] [--storage DIR] [--set key=value ...]

Why: a study reports the *maximum* of many noisy scores. Each trial's score is its configuration's
true quality plus seed noise (initialisation, shuffling), and the trial that wins is, more often
than not, one whose noise happened to be large and positive; the more trials, the larger the
expected excess (the winner's curse, selection bias). Its number is therefore biased upward, and so
is its margin over the ``alpha = beta = 0`` reference, which was run once. Re-running the chosen
configurations on seeds the study never used gives unbiased estimates: the selection no longer
looks at these numbers.

What it does: the top ``K`` ranked search trials of ``leaderboard.parquet`` (completed or stopped
early by ASHA: a stopped trial is re-run to its full epoch count) and the reference trial are each
trained with ``N`` fresh seeds (1000, 1001, ... skipping any seed the study used), one
``vlm2rec.train.fit`` call after another in this process. Every configuration gets the SAME seeds, so
seed ``s`` of a candidate and seed ``s`` of the reference share model initialisation and batch
order: the differences are paired, which removes the seed-to-seed variance both share. Per
configuration and test metric (``test/ndcg@10``, ``test/recall@10``) it reports the mean with a 95%
Student-t confidence interval and a two-sided paired t-test of candidate minus reference.

Files: ``STUDY_DIR/confirm/runs.jsonl`` (one line per finished run; a rerun skips them, so an
interrupted confirmation resumes) and ``STUDY_DIR/confirm.parquet`` (one row per configuration).
The statistics are pure functions over scipy's Student t distribution (``scipy.stats.t``,
``scipy.stats.ttest_rel``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy import stats

if __package__ in (None, ""):  # `python study/confirm.py`: see study/_script.py
    import _script  # noqa: F401

from study.leaderboard import ranked_by, read_leaderboard
from study.records import StudyFolder
from vlm2rec.atomic import atomic_write

__all__ = [
    "METRICS",
    "Candidate",
    "PairedTest",
    "format_table",
    "fresh_seeds",
    "main",
    "mean_ci",
    "paired_t_test",
    "run_confirm",
    "run_one",
    "select_candidates",
    "summarise",
]

#: Test metrics summarised per configuration (named as in docs/ARCHITECTURE.md).
METRICS = ("test/ndcg@10", "test/recall@10")
SEED_START = 1000  #: fresh seeds count up from here (studies use small seeds)
_RUNS = Path("confirm") / "runs.jsonl"


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    r"""Mean and half-width of its Student-t confidence interval:
    :math:`\bar x \pm t_{(1+c)/2,\, n-1}\, s / \sqrt{n}`, with :math:`s` the sample standard
    deviation (n - 1 denominator).

    ======  ========
    symbol  argument
    ======  ========
    x_i     ``values`` (n of them)
    c       ``level``
    ======  ========

    Shapes: ``values`` [n]. The half-width is NaN for n < 2 (no spread to estimate).
    """
    if not values:
        raise ValueError("mean_ci: no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(stats.t.ppf((1.0 + level) / 2.0, len(values) - 1)) * sem


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_t_test` (differences are ``x - y``)."""

    n: int  #: number of pairs
    mean_diff: float  #: mean difference
    ci_half: float  #: 95% CI half-width of the mean difference
    t: float  #: t statistic
    p_value: float  #: two-sided p-value


def paired_t_test(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> PairedTest:
    r"""Two-sided paired t-test of :math:`d_i = x_i - y_i`:
    :math:`t = \bar d / (s_d / \sqrt n)`, :math:`p = 2\,(1 - F_{n-1}(|t|))`.

    ======  ========
    symbol  argument
    ======  ========
    x_i     ``x`` (candidate, seed i)
    y_i     ``y`` (reference, same seed i)
    F_\nu   Student t CDF, n - 1 degrees of freedom
    ======  ========

    The statistic and p-value are ``scipy.stats.ttest_rel``'s.

    Shapes: ``x``, ``y`` [n], paired by position. Identical differences (:math:`s_d = 0` up to
    rounding) give
    :math:`t = \pm\infty, p = 0` if they are not zero and :math:`t = 0, p = 1` if they are; n < 2
    gives NaN.
    """
    if len(x) != len(y):
        raise ValueError(f"paired_t_test: {len(x)} values against {len(y)}: pairs must match")
    d = [a - b for a, b in zip(x, y, strict=True)]
    n = len(d)
    if n < 2:
        return PairedTest(n, d[0] if d else math.nan, math.nan, math.nan, math.nan)
    mean, half = mean_ci(d, level)
    sd = statistics.stdev(d)
    # No spread (up to float rounding: 0.3 - 0.2 != 0.4 - 0.3): a constant difference is certain
    # in sign (t = +-inf) unless it is zero, not a t of 1e15 made of rounding noise.
    if sd <= 1e-12 * max(abs(v) for v in d):
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
        return PairedTest(n, mean, half, t, p)
    res = stats.ttest_rel(x, y)
    return PairedTest(n, mean, half, float(res.statistic), float(res.pvalue))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One configuration to confirm."""

    trial_id: str  #: the study trial it comes from
    kind: str  #: reference | search
    rank: int | None  #: its rank in the study
    study_scores: dict[str, float]  #: its single-seed study numbers (study metric, test/*)
    config: dict[str, Any]  #: the resolved run config


def _config(row: Mapping[str, Any], study_dir: Path) -> dict[str, Any]:
    text = row.get("config")
    if isinstance(text, str) and text:
        return dict(json.loads(text))
    path = StudyFolder(study_dir).config(str(row["trial_id"]))
    if not path.exists():
        raise ValueError(
            f"{study_dir}/leaderboard.parquet: trial {row['trial_id']}: no `config` in its row "
            f"and no {path}: cannot re-run it"
        )
    return dict(json.loads(path.read_text()))


def select_candidates(
    frame: pd.DataFrame, study_dir: str | Path, top: int, metric: str
) -> list[Candidate]:
    """The reference trial (first) and the ``top`` best ranked search trials (completed or
    stopped early; errors have no rank) of a leaderboard frame."""
    ranked = frame[frame["rank"].notna() & (frame["status"] != "error")].sort_values("rank")
    rows = [*ranked[ranked["kind"] == "reference"].head(1).to_dict("records")]
    rows += ranked[ranked["kind"] == "search"].head(top).to_dict("records")
    keys = [metric, *METRICS]

    def scores(row: Mapping[str, Any]) -> dict[str, float]:
        return {k: float(row[k]) for k in keys if k in row and pd.notna(row[k])}

    return [
        Candidate(
            str(r["trial_id"]),
            str(r["kind"]),
            int(r["rank"]),
            scores(r),
            _config(r, Path(study_dir)),
        )
        for r in rows
    ]


def fresh_seeds(used: Iterable[int], n: int, start: int = SEED_START) -> list[int]:
    """``n`` seeds counting up from ``start``, skipping every seed in ``used``."""
    taken, seeds, s = set(used), list[int](), start
    while len(seeds) < n:
        if s not in taken:
            seeds.append(s)
        s += 1
    return seeds


def run_one(
    config: Mapping[str, Any], seed: int, overrides: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Train ``config`` with ``seed`` (plus ``overrides``) in this process; its test metrics.

    Checkpoints go to a temporary folder removed afterwards: only the numbers are kept.
    """
    from vlm2rec.config import apply_overrides, from_dict
    from vlm2rec.distributed import DistInfo
    from vlm2rec.train import fit

    cfg = apply_overrides(from_dict(config), {**(overrides or {}), "seed": seed})
    with tempfile.TemporaryDirectory(prefix="vlm2rec-confirm-") as root:
        result = fit(cfg, DistInfo(), checkpoint_root=root)
    return {k: float(v) for k, v in result.test.items()}


Runner = Callable[[Mapping[str, Any], int, Mapping[str, Any]], Mapping[str, float]]


def _setup_hash(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    text = json.dumps([config, overrides], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _done_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_confirm(
    study_dir: str | Path,
    candidates: Sequence[Candidate],
    seeds: Sequence[int],
    overrides: Mapping[str, Any] | None = None,
    runner: Runner = run_one,
) -> pd.DataFrame:
    """Run every (candidate, seed) not yet in ``confirm/runs.jsonl``; all runs as a frame with
    columns ``trial_id, kind, seed`` and the test metrics."""
    path = Path(study_dir) / _RUNS
    path.parent.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    setup = {c.trial_id: _setup_hash(c.config, overrides) for c in candidates}
    # a run on disk counts only for the same config and --set: anything else is another experiment
    runs = [r for r in _done_runs(path) if setup.get(r["trial_id"]) == r.get("setup")]
    done = {(r["trial_id"], r["seed"]) for r in runs}
    for cand in candidates:
        for seed in seeds:
            if (cand.trial_id, seed) in done:
                continue
            print(f"[confirm {cand.trial_id}] seed {seed} ...", flush=True)
            metrics = dict(runner(cand.config, seed, overrides))
            row = {"trial_id": cand.trial_id, "kind": cand.kind, "seed": seed, **metrics}
            with path.open("a") as fh:  # one line per finished run: an interrupted rerun resumes
                fh.write(json.dumps({**row, "setup": setup[cand.trial_id]}) + "\n")
            runs.append(row)
            print(f"[confirm {cand.trial_id}] seed {seed}: " + _fmt(metrics), flush=True)
    wanted = {(c.trial_id, s) for c in candidates for s in seeds}
    kept = [
        {k: v for k, v in r.items() if k != "setup"}
        for r in runs
        if (r["trial_id"], r["seed"]) in wanted
    ]
    return pd.DataFrame(kept)


def _fmt(metrics: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in METRICS if k in metrics)


def summarise(
    runs: pd.DataFrame, candidates: Sequence[Candidate], metrics: Sequence[str] = METRICS
) -> pd.DataFrame:
    """One row per candidate: per metric ``mean``, ``ci95`` (half-width), the single-seed
    ``study`` value, and against the reference (paired by seed) ``diff``, ``diff_ci95``, ``t``,
    ``p``. Column names are ``<metric>/<statistic>``."""
    ref = next((c for c in candidates if c.kind == "reference"), None)
    ref_runs = runs[runs["trial_id"] == ref.trial_id] if ref is not None else runs.iloc[0:0]
    rows = []
    for cand in candidates:
        mine = runs[runs["trial_id"] == cand.trial_id].sort_values("seed")
        row: dict[str, Any] = {
            "trial_id": cand.trial_id,
            "kind": cand.kind,
            "study_rank": cand.rank,
            "n_seeds": len(mine),
            "seeds": ",".join(str(int(s)) for s in mine["seed"]),
        }
        for m in metrics:
            values = [float(v) for v in mine[m]] if m in mine else []
            row[f"{m}/mean"], row[f"{m}/ci95"] = mean_ci(values) if values else (math.nan,) * 2
            row[f"{m}/study"] = cand.study_scores.get(m, math.nan)
            paired = mine.merge(ref_runs, on="seed", suffixes=("", "_ref"))
            test = (
                paired_t_test(list(paired[m]), list(paired[f"{m}_ref"]))
                if ref is not None and cand is not ref and m in paired and len(paired)
                else None
            )
            row[f"{m}/diff"] = test.mean_diff if test else math.nan
            row[f"{m}/diff_ci95"] = test.ci_half if test else math.nan
            row[f"{m}/t"] = test.t if test else math.nan
            row[f"{m}/p"] = test.p_value if test else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(summary: pd.DataFrame, metrics: Sequence[str] = METRICS) -> str:
    """The summary as a console table: ``mean ± ci`` and ``diff ± ci (p)`` per metric."""
    out = summary[["trial_id", "kind", "study_rank", "n_seeds"]].copy()
    for m in metrics:
        out[m] = [
            f"{a:.4f} ± {b:.4f}"
            for a, b in zip(summary[f"{m}/mean"], summary[f"{m}/ci95"], strict=True)
        ]
        out[f"{m} (study)"] = summary[f"{m}/study"].map(lambda v: f"{v:.4f}")
        out[f"{m} vs ref"] = [
            "" if math.isnan(d) else f"{d:+.4f} ± {c:.4f} (p={p:.3f})"
            for d, c, p in zip(
                summary[f"{m}/diff"], summary[f"{m}/diff_ci95"], summary[f"{m}/p"], strict=True
            )
        ]
    return str(out.to_string(index=False))


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))  # readers see the old or the new file


def _parse_args(argv: list[str] | None, prog: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study_dir", type=Path, help="study folder, or a study name under --storage")
    p.add_argument("--top", type=int, default=3, help="search trials to confirm (default 3)")
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds per configuration (>= 2)")
    p.add_argument("--storage", type=Path, help="folder of study folders (as run_search.py)")
    p.add_argument("--seed-start", type=int, default=SEED_START, help="first fresh seed")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads of the runs (default 1)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point (``prog``: the name usage lines show); exit 2 for a refused input."""
    args = _parse_args(argv, prog)
    from vlm2rec.config import parse_override

    study_dir = args.storage / args.study_dir if args.storage else args.study_dir
    board = StudyFolder(study_dir).leaderboard
    if not board.exists() or args.seeds < 2 or args.top < 0:
        print(f"error: need {board} to exist, --seeds >= 2 and --top >= 0", file=sys.stderr)
        return 2
    table = read_leaderboard(board)
    metric, _mode = ranked_by(table)
    frame = table.to_pandas()
    candidates = select_candidates(frame, study_dir, args.top, metric)
    used = [int(s) for s in frame["seed"].dropna()] if "seed" in frame else []
    seeds = fresh_seeds(used, args.seeds, args.seed_start)
    overrides = dict(parse_override(text) for text in args.set)
    # The runs train one after another in this process, on one thread by default, as the default
    # study's trials do (study/driver.py): more threads on a shared 2-core machine made the same
    # CPU run many times slower (OpenMP threads spin waiting for a descheduled sibling).
    torch.set_num_threads(max(1, args.threads))
    print(f"confirming {[c.trial_id for c in candidates]} on seeds {seeds}", flush=True)
    runs = run_confirm(study_dir, candidates, seeds, overrides)
    summary = summarise(runs, candidates)
    summary.insert(0, "study", str(frame["study"].iloc[0]))
    _write_parquet(summary, study_dir / "confirm.parquet")
    print(format_table(summary))
    print(f"\nconfirm: {study_dir / 'confirm.parquet'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
