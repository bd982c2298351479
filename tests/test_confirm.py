"""study/confirm.py: CIs against printed t tables, p-values against the closed-form t CDFs, CI and
paired test against hand computations, candidate and seed choice, resume, and one end-to-end
confirmation of a fabricated study whose configs train tiny-clip for one epoch on the shared
60-user fixture."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from study.confirm import (
    METRICS,
    Candidate,
    fresh_seeds,
    main,
    mean_ci,
    paired_t_test,
    run_confirm,
    select_candidates,
    summarise,
)
from study.leaderboard import build_rows, write_leaderboard
from study.records import TrialRecord
from vlm2rec.config import RunConfig, SyntheticConfig, apply_overrides, to_dict
from vlm2rec.data.schema import PreparedDataset

# Two-sided critical values from printed t tables (upper quantiles), 6 significant digits.
T_TABLE = [
    (0.975, 1, 12.7062),
    (0.975, 2, 4.30265),
    (0.975, 4, 2.77645),
    (0.975, 10, 2.22814),
    (0.975, 30, 2.04227),
    (0.995, 5, 4.03214),
    (0.95, 3, 2.35336),
    (0.9, 20, 1.32534),
]


@pytest.mark.parametrize(("p", "df", "expected"), T_TABLE)
def test_ci_half_width_uses_the_printed_t_quantile(p: float, df: int, expected: float) -> None:
    # n = df + 1 values; a two-sided interval at level 2p - 1 is t_{p, df} standard errors wide.
    values = [float(i * i) for i in range(df + 1)]
    sem = statistics.stdev(values) / math.sqrt(len(values))
    _, half = mean_ci(values, level=2 * p - 1)
    assert half / sem == pytest.approx(expected, rel=2e-5)


def _t_cdf(t: float, df: int) -> float:
    """Student t CDF in closed form for df = 1 (Cauchy), 2 and 3."""
    if df == 1:
        return 0.5 + math.atan(t) / math.pi
    if df == 2:
        return 0.5 + t / (2.0 * math.sqrt(2.0 + t * t))
    return (
        0.5 + (t / (math.sqrt(3.0) * (1.0 + t * t / 3.0)) + math.atan(t / math.sqrt(3.0))) / math.pi
    )


#: Differences with sample mean 0 and sample standard deviation 1, for n = 2, 3, 4 pairs.
_UNIT = {2: [-(0.5**0.5), 0.5**0.5], 3: [-1.0, 0.0, 1.0], 4: [-(0.75**0.5)] * 2 + [0.75**0.5] * 2}


@pytest.mark.parametrize("t", [-30.0, -2.5, -0.3, 0.0, 0.7, 1.9, 12.0])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_p_value_matches_the_closed_form_t_cdf(t: float, n: int) -> None:
    # d = t / sqrt(n) + unit: mean t / sqrt(n), s_d = 1, so the statistic is t on n - 1 df.
    d = [t / math.sqrt(n) + u for u in _UNIT[n]]
    res = paired_t_test(d, [0.0] * n)
    assert res.t == pytest.approx(t, abs=1e-9)
    assert res.p_value == pytest.approx(2.0 * (1.0 - _t_cdf(abs(t), n - 1)), abs=1e-10)


def test_mean_ci_of_known_data() -> None:
    # 1..5: mean 3, s = sqrt(2.5), sem = sqrt(2.5 / 5) = sqrt(0.5), t_{.975,4} = 2.776445
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert half == pytest.approx(2.776445 * math.sqrt(0.5), rel=1e-6)
    # two values a, b: s = |a - b| / sqrt 2, sem = |a - b| / 2, t_{.975,1} = 12.7062
    assert mean_ci([0.30, 0.34])[1] == pytest.approx(12.7062 * 0.02, rel=1e-5)
    assert math.isnan(mean_ci([0.4])[1])  # one seed: no spread, no interval


def test_paired_t_test_by_hand() -> None:
    # d = [1, 1, 2, 2]: mean 1.5, s_d = sqrt(1/3), t = 1.5 / (sqrt(1/3) / 2) = 3 sqrt(3)
    res = paired_t_test([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.0, 2.0])
    t = 3.0 * math.sqrt(3.0)
    assert (res.n, res.mean_diff) == (4, 1.5)
    assert res.t == pytest.approx(t, rel=1e-12)
    cdf3 = 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi
    assert res.p_value == pytest.approx(2.0 * (1.0 - cdf3), rel=1e-9)  # ~0.0138
    assert res.ci_half == pytest.approx(3.182446 * math.sqrt(1 / 3) / 2, rel=1e-6)


def test_paired_t_test_degenerate_cases() -> None:
    same = paired_t_test([0.3, 0.4, 0.5], [0.2, 0.3, 0.4])  # a constant non-zero shift
    assert same.t == math.inf and same.p_value == 0.0
    zero = paired_t_test([0.3, 0.4], [0.3, 0.4])
    assert zero.t == 0.0 and zero.p_value == 1.0
    assert math.isnan(paired_t_test([0.3], [0.2]).p_value)
    with pytest.raises(ValueError, match="3 values against 2"):
        paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0])


@given(
    st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=8).flatmap(
        lambda x: st.tuples(
            st.just(x), st.lists(st.floats(-1, 1), min_size=len(x), max_size=len(x))
        )
    )
)
@settings(max_examples=150, deadline=None)
def test_ci_of_the_difference_excludes_zero_iff_p_below_5_percent(
    pair: tuple[list[float], list[float]],
) -> None:
    x, y = pair
    res = paired_t_test(x, y)
    if not math.isfinite(res.t) or res.t == 0.0 or abs(abs(res.mean_diff) - res.ci_half) < 1e-9:
        return  # degenerate or exactly on the boundary: no strict duality to check
    assert (abs(res.mean_diff) > res.ci_half) == (res.p_value < 0.05)


def test_fresh_seeds_skip_the_studys_seeds() -> None:
    assert fresh_seeds([0, 1], 3) == [1000, 1001, 1002]
    assert fresh_seeds([1000, 1002, 7], 3) == [1001, 1003, 1004]
    assert fresh_seeds([], 2, start=5) == [5, 6]


def _frame() -> pd.DataFrame:
    rows = [
        ("a", "search", "completed", 1, 0.40),
        ("ref", "reference", "completed", 3, 0.30),
        ("b", "search", "stopped_early", 2, 0.35),
        ("c", "search", "completed", 4, 0.20),
        ("x", "search", "error", None, None),
    ]
    return pd.DataFrame(
        [
            {
                "trial_id": t,
                "kind": k,
                "status": s,
                "rank": r,
                "val/ndcg@10": v,
                "config": json.dumps({"trial": t}),
            }
            for t, k, s, r, v in rows
        ]
    )


def test_select_candidates_reference_first_then_top_k_including_stopped(tmp_path: Path) -> None:
    got = select_candidates(_frame(), tmp_path, top=2, metric="val/ndcg@10")
    assert [(c.trial_id, c.kind, c.rank) for c in got] == [
        ("ref", "reference", 3),
        ("a", "search", 1),
        ("b", "search", 2),  # ASHA stopped it: re-run in full, it may be as good
    ]
    assert got[1].config == {"trial": "a"} and got[1].study_scores == {"val/ndcg@10": 0.40}


def test_select_candidates_falls_back_to_configs_folder_and_names_what_is_missing(
    tmp_path: Path,
) -> None:
    frame = _frame().assign(config=None)
    (tmp_path / "configs").mkdir()
    for t in ("ref", "a"):
        (tmp_path / "configs" / f"{t}.json").write_text(json.dumps({"from": t}))
    got = select_candidates(frame, tmp_path, top=1, metric="val/ndcg@10")
    assert [c.config for c in got] == [{"from": "ref"}, {"from": "a"}]
    with pytest.raises(ValueError, match="trial b: no `config`"):
        select_candidates(frame, tmp_path, top=2, metric="val/ndcg@10")


def _fake_runner(calls: list[tuple[str, int]]) -> Any:
    """Metrics that depend on config and seed only: trial quality + a shared seed effect."""
    quality = {"ref": 0.30, "a": 0.34}

    def run(config: Mapping[str, Any], seed: int, overrides: Mapping[str, Any]) -> dict[str, float]:
        calls.append((str(config["trial"]), seed))
        shared = 0.01 * (seed - 1000) ** 2  # a seed that is good for one is good for both
        own = 0.001 * (seed % 2) if config["trial"] == "a" else 0.0
        value = quality[str(config["trial"])] + shared + own
        return {"test/ndcg@10": value, "test/recall@10": 2 * value}

    return run


def test_run_confirm_resumes_and_summary_pairs_by_seed(tmp_path: Path) -> None:
    cands = select_candidates(_frame(), tmp_path, top=1, metric="val/ndcg@10")
    calls: list[tuple[str, int]] = []
    runs = run_confirm(tmp_path, cands, [1000, 1001, 1002], runner=_fake_runner(calls))
    assert len(calls) == 6 and len(runs) == 6
    again = run_confirm(tmp_path, cands, [1000, 1001, 1002], runner=_fake_runner(calls))
    assert len(calls) == 6  # every (trial, seed) was on disk: nothing re-run
    pd.testing.assert_frame_equal(runs, again)
    run_confirm(tmp_path, cands, [1000], {"train.epochs": 1}, runner=_fake_runner(calls))
    assert len(calls) == 8  # other overrides are another experiment
    changed = [dataclasses.replace(cands[1], config={"trial": "a", "lr": 1})]
    run_confirm(tmp_path, changed, [1000], runner=_fake_runner(calls))
    assert calls[-1] == ("a", 1000) and len(calls) == 9  # so is another config under the same id

    summary = summarise(runs, cands).set_index("trial_id")
    ref = runs[runs.trial_id == "ref"].sort_values("seed")
    a = runs[runs.trial_id == "a"].sort_values("seed")
    diffs = list(a["test/ndcg@10"].to_numpy() - ref["test/ndcg@10"].to_numpy())
    expected = paired_t_test(list(a["test/ndcg@10"]), list(ref["test/ndcg@10"]))
    row = summary.loc["a"]
    assert row["n_seeds"] == 3 and row["seeds"] == "1000,1001,1002"
    assert row["test/ndcg@10/diff"] == pytest.approx(sum(diffs) / 3)
    assert row["test/ndcg@10/t"] == pytest.approx(expected.t)
    assert row["test/ndcg@10/mean"] == pytest.approx(a["test/ndcg@10"].mean())
    assert math.isnan(row["test/ndcg@10/study"])  # the leaderboard frame had no test column
    assert math.isnan(
        summary.loc["ref", "test/ndcg@10/p"]
    )  # no test of the reference against itself
    # the shared seed effect cancels in the pairs: the paired CI is far narrower than the unpaired
    assert row["test/ndcg@10/diff_ci95"] < row["test/ndcg@10/ci95"] / 5


# ----------------------------------------------------------------------------- end to end


def _tiny_config(data: Path, synthetic: SyntheticConfig, seed: int, alpha: float) -> dict[str, Any]:
    """tiny-clip, full fine-tuning, 1 epoch, batch 16 on the 60-user fixture."""
    cfg = apply_overrides(
        RunConfig(),
        {
            "data.path": str(data),
            "data.prepare_if_missing": False,
            "data.synthetic": to_dict(synthetic),
            "embedder.name": "tiny-clip",
            "embedder.finetune": "full",
            "embedder.max_text_tokens": 32,
            "optim.lr": 2e-3,
            "train.epochs": 1,
            "train.batch_size": 16,
            "train.device": "cpu",
            "loss.alpha": alpha,
            "loss.beta": alpha,
            "seed": seed,
        },
    )
    return to_dict(cfg)


def _fabricated_study(root: Path, data: Path, synthetic: SyntheticConfig) -> Path:
    study_dir = root / "fab"
    trials = [
        ("ref", "reference", 0.0, 0.30),
        ("good", "search", 0.5, 0.35),
        ("meh", "search", 1.0, 0.25),
    ]
    records = [
        TrialRecord(
            trial_id=t,
            kind=k,  # type: ignore[arg-type]
            params={"loss.alpha": alpha},
            history=[{"epoch": 1.0, "val/ndcg@10": v}],
            test_metrics={"test/ndcg@10": v, "test/recall@10": 2 * v},
            config=_tiny_config(
                data, synthetic, 1000, alpha
            ),  # the study used 1000: confirm must skip it
            seed=1000,
        )
        for t, k, alpha, v in trials
    ]
    table = build_rows(
        records, study="fab", metric="val/ndcg@10", mode="max", param_kinds={"loss.alpha": "float"}
    )
    write_leaderboard(table, study_dir / "leaderboard.parquet")
    return study_dir


@pytest.fixture
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on 2 busy cores torch's default threads mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.usefixtures("_one_thread")
def test_confirm_end_to_end_on_a_tiny_fabricated_study(
    tiny_dataset: PreparedDataset,
    tiny_synthetic_config: SyntheticConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.path, data)
    study_dir = _fabricated_study(tmp_path, data, tiny_synthetic_config)
    assert main([str(study_dir), "--top", "1", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    summary = pd.read_parquet(study_dir / "confirm.parquet")
    assert list(summary["trial_id"]) == ["ref", "good"]
    assert list(summary["seeds"]) == ["1001,1002", "1001,1002"]
    for m in METRICS:
        assert summary[f"{m}/mean"].between(0, 1).all() and summary[f"{m}/ci95"].notna().all()
    assert summary.loc[1, "test/ndcg@10/study"] == pytest.approx(0.35)
    runs = [json.loads(x) for x in (study_dir / "confirm" / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["trial_id"], r["seed"]) for r in runs) == [
        ("good", 1001), ("good", 1002), ("ref", 1001), ("ref", 1002)
    ]  # fmt: skip
    # different seeds train different models: the runs are not copies of each other
    ref_scores = {r["seed"]: r["test/ndcg@10"] for r in runs if r["trial_id"] == "ref"}
    assert len(runs[0]) > 10 and ref_scores[1001] != ref_scores[1002]
    assert "good" in out and "±" in out and "p=" in out


def test_candidate_is_a_frozen_value() -> None:
    cand = Candidate("t", "search", 1, {}, {})
    with pytest.raises(AttributeError):
        cand.rank = 2  # type: ignore[misc]


def test_main_refuses_a_folder_without_leaderboard_or_too_few_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path), "--seeds", "3"]) == 2
    assert f"{tmp_path}/leaderboard.parquet" in capsys.readouterr().err
    assert main(["fab", "--storage", str(tmp_path), "--seeds", "1"]) == 2  # no CI from one seed
