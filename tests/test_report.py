"""study/report.py on a fabricated study folder (trial records, leaderboard, optuna.db; no Ray):
the HTML references every PNG, the PNGs are real images, figures show the numbers they are given,
log axes follow the stored distributions, and importances are refused with too few trials."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from study.leaderboard import build_rows, write_leaderboard
from study.records import TrialRecord
from study.report import (
    VIEWS,
    collapse_note,
    fig_collapse,
    fig_learning_curves,
    fig_parallel,
    fig_param_scatter,
    importance_html,
    leaderboard_html,
    load_study,
    param_importances,
    try_write_report,
    write_report,
)

STUDY = "fab"
METRIC = "val/ndcg@10"
KINDS = {"loss.alpha": "float", "loss.beta": "float", "loss.temperature": "float"}
DISTS: dict[str, optuna.distributions.BaseDistribution] = {
    "loss.alpha": optuna.distributions.FloatDistribution(0.05, 4.0, log=True),
    "loss.beta": optuna.distributions.FloatDistribution(0.01, 2.0, log=True),
    "loss.temperature": optuna.distributions.FloatDistribution(0.01, 0.2),  # linear on purpose
}

#: Trials 0 and 2 sit at the ends of each range: alpha and beta span > 20x, temperature < 20x.
CORNERS = {
    0: {"loss.alpha": 0.05, "loss.beta": 0.01, "loss.temperature": 0.05},
    2: {"loss.alpha": 4.0, "loss.beta": 2.0, "loss.temperature": 0.19},
}


def _history(final: float, epochs: int, rng: np.random.Generator) -> list[dict[str, float]]:
    """Per-epoch reports rising to ``final``, with per-view scores and a balance."""
    rows = []
    for e in range(1, epochs + 1):
        fused = final * e / epochs
        text, image = fused * rng.uniform(0, 0.5), fused * rng.uniform(0.2, 0.8)
        rows.append(
            {
                "epoch": float(e),
                METRIC: fused,
                VIEWS["text only"]: text,
                VIEWS["image only"]: image,
                "val/modality_balance": min(text, image) / max(text, image),
                "train/loss": 3.0 - e * 0.1,
            }
        )
    return rows


def _trials(n_search: int) -> list[dict[str, Any]]:
    """A reference, ``n_search`` searched trials (the 2nd stopped early) and one failed trial."""
    rng = np.random.default_rng(0)
    out: list[dict[str, Any]] = [
        {
            "trial_id": "ref_00000",
            "kind": "reference",
            "params": {"loss.alpha": 0.0, "loss.beta": 0.0, "loss.temperature": 0.07},
            "history": _history(0.30, 3, rng),
            "test_metrics": {"test/ndcg@10": 0.29},
        }
    ]
    for i in range(n_search):
        stopped = i == 1
        out.append(
            {
                "trial_id": f"s{i:03d}",
                "kind": "search",
                "status": "stopped_early" if stopped else "completed",
                "params": CORNERS.get(
                    i,
                    {
                        "loss.alpha": float(np.exp(rng.uniform(np.log(0.05), np.log(4.0)))),
                        "loss.beta": float(np.exp(rng.uniform(np.log(0.01), np.log(2.0)))),
                        "loss.temperature": float(rng.uniform(0.05, 0.19)),
                    },
                ),
                "history": _history(float(rng.uniform(0.2, 0.4)), 1 if stopped else 3, rng),
                "test_metrics": None if stopped else {"test/ndcg@10": float(rng.uniform(0.2, 0.4))},
            }
        )
    out.append({"trial_id": "bad", "kind": "search", "status": "error", "error": "boom"})
    return out


def make_study(root: Path, n_search: int = 5, optuna_trials: int | None = None) -> Path:
    """Write trials/*.json, leaderboard.parquet and (unless ``optuna_trials == 0``) optuna.db."""
    study_dir = root / STUDY
    (study_dir / "trials").mkdir(parents=True)
    trials = _trials(n_search)
    for t in trials:
        (study_dir / "trials" / f"{t['trial_id']}.json").write_text(json.dumps(t))
    records = [TrialRecord(**t) for t in trials]
    table = build_rows(records, study=STUDY, metric=METRIC, mode="max", param_kinds=KINDS)
    write_leaderboard(table, study_dir / "leaderboard.parquet")
    searched = [t for t in trials if t["kind"] == "search" and t.get("status") != "error"]
    n = len(searched) if optuna_trials is None else optuna_trials
    if n:
        study = optuna.create_study(
            study_name=STUDY, storage=f"sqlite:///{study_dir / 'optuna.db'}", direction="maximize"
        )
        for t in searched[:n]:
            value = max(h[METRIC] for h in t["history"])
            study.add_trial(
                optuna.trial.create_trial(params=t["params"], distributions=DISTS, value=value)
            )
    return study_dir


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_study(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(study_dir: Path) -> Path:
    return write_report(study_dir)


def test_html_references_every_png_and_each_is_a_valid_image(report: Path, study_dir: Path) -> None:
    page = report.read_text()
    referenced = set(re.findall(r'<img src="([^"]+)"', page))
    written = {f"report/{p.name}" for p in (study_dir / "report").glob("*.png")}
    assert referenced == written
    expected = {f"report/param_{p}.png" for p in KINDS} | {
        f"report/{n}.png" for n in ("parallel", "importance", "collapse", "curves")
    }
    assert written == expected
    for name in written:
        with Image.open(study_dir / name) as img:
            img.verify()  # raises on a truncated or non-PNG file
        with Image.open(study_dir / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200


def test_html_table_holds_every_ranked_trial_and_the_error_is_left_out(report: Path) -> None:
    page = report.read_text()
    for trial in ("ref_00000", "s000", "s001", "s004"):
        assert f"<td>{trial}</td>" in page
    assert "<td>bad</td>" not in page  # unranked: an error has no score
    assert "PED-ANOVA over 5 finished trials" in page


def test_leaderboard_html_keeps_the_reference_when_it_is_not_in_the_top(study_dir: Path) -> None:
    data = load_study(study_dir)
    first = str(data.frame.iloc[0]["trial_id"])  # rank 1
    ids = re.findall(r"<td>(ref_00000|s\d{3}|bad)</td>", leaderboard_html(data, top=1))
    assert ids == ([first] if first == "ref_00000" else [first, "ref_00000"])
    assert first != "ref_00000"  # the fabricated study has better search trials than the reference


def test_log_scales_come_from_the_stored_distributions(study_dir: Path) -> None:
    data = load_study(study_dir)
    assert data.params == sorted(KINDS)
    assert data.log_params == {"loss.alpha", "loss.beta"}
    fig = fig_param_scatter(data.frame, "loss.alpha", METRIC, log=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == METRIC
    ref_line = [ln for ln in ax.get_lines() if "reference" in str(ln.get_label())]
    ref_value = data.frame.set_index("trial_id").loc["ref_00000", METRIC]
    assert len(ref_line) == 1 and np.asarray(ref_line[0].get_ydata())[0] == pytest.approx(ref_value)


def test_without_optuna_db_scales_are_guessed_and_importance_is_explained(tmp_path: Path) -> None:
    study_dir = make_study(tmp_path, optuna_trials=0)
    data = load_study(study_dir)
    # wide positive ranges are guessed log although the reference's alpha = beta = 0
    assert data.log_params == {"loss.alpha", "loss.beta"}
    imp, note = param_importances(study_dir, STUDY)
    assert imp is None and "no optuna.db" in note
    html = importance_html(study_dir, STUDY, tmp_path)
    assert "<img" not in html and "no optuna.db" in html


def test_too_few_finished_trials_for_importance_is_said_not_raised(tmp_path: Path) -> None:
    study_dir = make_study(tmp_path, optuna_trials=2)
    imp, note = param_importances(study_dir, STUDY)
    assert imp is None and "only 2 finished search trial(s)" in note
    html = importance_html(study_dir, STUDY, tmp_path)
    assert "<img" not in html and "only 2 finished" in html
    assert not (tmp_path / "importance.png").exists()


def test_collapse_bars_show_each_view_with_the_reference_first(study_dir: Path) -> None:
    data = load_study(study_dir)
    fig = fig_collapse(data.frame)
    top_ax, bal_ax = fig.axes
    labels = [t.get_text() for t in bal_ax.get_xticklabels()]
    assert labels[0] == "ref_00000 (reference)" and "bad" not in labels
    assert len(labels) == len(data.frame) - 1  # every scored trial; the error is left out
    by_id = data.frame.set_index("trial_id")
    ordered = ["ref_00000", *labels[1:]]
    heights = [p.get_height() for p in top_ax.patches if isinstance(p, Rectangle)]
    n = len(ordered)
    assert len(heights) == len(VIEWS) * n
    for v, col in enumerate(VIEWS.values()):  # patches come view by view, trial by trial
        assert heights[v * n : (v + 1) * n] == pytest.approx([by_id.loc[t, col] for t in ordered])
    balance = [p.get_height() for p in bal_ax.patches if isinstance(p, Rectangle)]
    assert balance == pytest.approx([by_id.loc[t, "val/modality_balance"] for t in ordered])


def test_learning_curves_plot_each_best_trial_history_and_the_reference(study_dir: Path) -> None:
    data = load_study(study_dir)
    fig = fig_learning_curves(data.histories, data.frame, METRIC, top=2)
    lines = {str(ln.get_label()): ln for ln in fig.axes[0].get_lines()}
    best = data.frame[(data.frame["kind"] == "search") & data.frame["rank"].notna()].head(2)
    assert len(lines) == 3 and any("(reference)" in k for k in lines)
    for _, row in best.iterrows():
        (line,) = [ln for k, ln in lines.items() if str(row["trial_id"]) in k]
        hist = data.histories[str(row["trial_id"])]
        assert np.asarray(line.get_ydata()).tolist() == pytest.approx([h[METRIC] for h in hist])
        assert np.asarray(line.get_xdata()).tolist() == [h["epoch"] for h in hist]


def test_try_write_report_turns_a_failure_into_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert try_write_report(tmp_path / "missing") is None
    assert "warning: study report not written" in capsys.readouterr().out


def test_collapse_bars_and_curves_carry_the_oracles_of_synthetic_data(study_dir: Path) -> None:
    frame = load_study(study_dir).frame.copy()
    assert not fig_collapse(frame).axes[0].lines  # no oracle columns: no lines
    oracle = {"val/oracle/ndcg@10": 0.63, "val/oracle/ndcg@10/text": 0.21}
    oracle["val/oracle/ndcg@10/image"] = 0.22
    for key, value in oracle.items():
        frame[key] = value
    top_ax = fig_collapse(frame).axes[0]
    assert sorted(line.get_ydata()[0] for line in top_ax.lines) == [0.21, 0.22, 0.63]
    assert {"oracle, fused", "oracle, text only"} <= {line.get_label() for line in top_ax.lines}


def test_collapse_note_flags_a_view_that_is_zero_in_every_trial(study_dir: Path) -> None:
    frame = load_study(study_dir).frame
    assert collapse_note(frame) == ""  # the fabricated views are all non-zero
    flat = frame.assign(**{VIEWS["text only"]: 0.0})
    note = collapse_note(flat)
    assert "text only NDCG@10 is exactly 0 in every trial" in note and "image only" not in note


def test_main_refuses_a_folder_without_leaderboard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.report import main

    assert main([str(tmp_path)]) == 2
    assert "no leaderboard" in capsys.readouterr().err


def test_categorical_and_bool_params_get_category_axes(study_dir: Path) -> None:
    frame = load_study(study_dir).frame.copy()
    variants = ["reweight", "hard_negative"] * len(frame)
    frame["param.loss.penalty_variant"] = variants[: len(frame)]
    frame["param.loss.gather"] = [i % 2 == 0 for i in range(len(frame))]
    params = ["loss.alpha", "loss.penalty_variant", "loss.gather"]
    fig = fig_parallel(frame, params, METRIC, frozenset({"loss.alpha"}))
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"hard_negative", "reweight"} <= texts  # the axis ends name the categories (sorted)
    scored = frame[frame[METRIC].notna()]
    lines = [ln for ln in fig.axes[0].get_lines() if len(np.asarray(ln.get_xdata())) == 4]
    assert len(lines) == len(scored)
    for line, (_, row) in zip(lines, scored.iterrows(), strict=True):
        y = np.asarray(line.get_ydata())
        assert y[1] == (1.0 if row["param.loss.penalty_variant"] == "reweight" else 0.0)
        assert y[2] == (1.0 if row["param.loss.gather"] else 0.0)
    assert fig_param_scatter(frame, "loss.penalty_variant", METRIC).axes[0].get_xscale() == "linear"
