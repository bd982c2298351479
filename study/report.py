"""The study report: ``report.html`` plus PNGs in ``report/``, built offline from a study folder.

    python study/report.py STUDY_DIR [--top K]

Reads what a study leaves behind (docs/ARCHITECTURE.md, "Where a study's files live"):
``leaderboard.parquet`` (one row per trial at its best epoch; the study metric and mode in its
schema metadata), the trial records ``trials/<trial_id>.json`` (every per-epoch report, read
through ``study.records``) and ``optuna.db`` (the search trials as the sampler saw them: parameter
distributions, hence which axes are logarithmic, and the importances).

The figures answer, in order: who won and by how much over the ``alpha = beta = 0`` reference (the
table); where in each parameter's range the good trials sit (scatter per parameter, reference as a
horizontal line); how parameters combine (parallel coordinates); which parameters mattered (Optuna's
PED-ANOVA importances); whether a trial leans on one modality (fused vs text-only vs image-only
NDCG@10 and ``val/modality_balance``: the collapse picture); and how the best trials learnt against
the reference (validation metric per epoch). Figure builders are pure functions of a pandas frame or
trial histories returning a matplotlib ``Figure``; :func:`write_report` does the IO.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster head node

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if __package__ in (None, ""):  # `python study/report.py`: see study/_script.py
    import _script  # noqa: F401

from study.leaderboard import ranked_by, read_leaderboard
from study.records import StudyFolder, read_records

__all__ = [
    "StudyData",
    "collapse_note",
    "fig_collapse",
    "fig_importance",
    "fig_learning_curves",
    "fig_parallel",
    "fig_param_scatter",
    "importance_html",
    "leaderboard_html",
    "load_study",
    "main",
    "param_importances",
    "try_write_report",
    "write_report",
]

#: The three evaluation views of NDCG@10 (docs/ARCHITECTURE.md, "One name per number") and the
#: balance derived from them.
VIEWS = {"fused": "val/ndcg@10", "text only": "val/ndcg@10/text", "image only": "val/ndcg@10/image"}
BALANCE = "val/modality_balance"
#: Fewest finished Optuna trials for which an importance estimate means anything.
MIN_IMPORTANCE_TRIALS = 3
_REF_STYLE: dict[str, Any] = {"color": "crimson", "linestyle": "--", "linewidth": 1.5}


@dataclasses.dataclass(frozen=True)
class StudyData:
    """Everything the report reads from one study folder."""

    name: str  #: study name (leaderboard ``study`` column, = Optuna study name)
    frame: pd.DataFrame  #: the leaderboard, ranked (rank 1 first, unranked last)
    metric: str  #: the study metric, e.g. ``val/ndcg@10``
    mode: str  #: max | min
    params: list[str]  #: searched dotted paths (``param.<path>`` columns)
    log_params: frozenset[str]  #: params searched on a log scale
    histories: dict[str, list[dict[str, float]]]  #: trial_id -> per-epoch reports


def _stored_study(study_dir: Path, name: str) -> Any:
    """The search study in ``optuna.db``, or None when there is no such file or study."""
    db = StudyFolder(study_dir).optuna_db
    if not db.exists():
        return None
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # quiet for this load only
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    except KeyError:  # the database holds no study of this name
        return None
    finally:
        optuna.logging.set_verbosity(before)


def _optuna_distributions(study_dir: Path, name: str) -> dict[str, Any]:
    """``{param: distribution}`` from ``optuna.db`` (empty when there is no stored study)."""
    study = _stored_study(study_dir, name)
    if study is None:
        return {}
    return {k: v for t in study.get_trials(deepcopy=False) for k, v in t.distributions.items()}


def _looks_log(values: pd.Series) -> bool:
    """Fallback without optuna.db: searched values all positive and spanning a factor >= 20."""
    v = values.dropna()
    if not pd.api.types.is_numeric_dtype(v) or pd.api.types.is_bool_dtype(v):
        return False
    return bool(len(v) > 1 and (v > 0).all() and v.max() / v.min() >= 20)


def load_study(study_dir: str | Path) -> StudyData:
    """Read leaderboard, trial histories and parameter scales of ``study_dir``."""
    folder = StudyFolder(Path(study_dir))
    table = read_leaderboard(folder.leaderboard)
    metric, mode = ranked_by(table)
    frame = table.to_pandas()
    name = str(frame["study"].iloc[0]) if len(frame) else folder.root.name
    params = [c.removeprefix("param.") for c in frame.columns if c.startswith("param.")]
    dists = _optuna_distributions(folder.root, name)
    searched = frame[frame["kind"] == "search"]  # the reference's alpha = 0 is not in the range
    log = {
        p
        for p in params
        if (getattr(dists[p], "log", False) if p in dists else _looks_log(searched[f"param.{p}"]))
    }
    histories = {r.trial_id: list(r.history) for r in read_records(folder)}
    return StudyData(name, frame, metric, mode, params, frozenset(log), histories)


def _label(row: Mapping[str, Any]) -> str:
    return f"{row['trial_id']} (reference)" if row["kind"] == "reference" else str(row["trial_id"])


def _reference(frame: pd.DataFrame) -> pd.Series | None:
    ref = frame[frame["kind"] == "reference"]
    return ref.iloc[0] if len(ref) else None


def _scored(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows that have a finite study metric (errors and never-validated trials drop out)."""
    if metric not in frame.columns:
        return frame.iloc[0:0]
    return frame[np.isfinite(frame[metric].astype(float))]


def leaderboard_html(data: StudyData, top: int = 10) -> str:
    """The top ``top`` ranked trials and the reference row (if not among them) as an HTML table."""
    f = data.frame
    rows = f[f["rank"].notna()].head(top)
    ref = f[f["kind"] == "reference"]
    rows = pd.concat([rows, ref[~ref["trial_id"].isin(rows["trial_id"])]])
    test = "test/" + data.metric.split("/", 1)[-1]
    cols = ["rank", "trial_id", "kind", "status", data.metric, test, BALANCE, "best_epoch"]
    cols += [f"param.{p}" for p in data.params] + ["epochs", "wall_s"]
    shown = rows[[c for c in cols if c in rows.columns]]
    return str(shown.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}"))


def fig_param_scatter(frame: pd.DataFrame, param: str, metric: str, log: bool = False) -> Figure:
    """One searched parameter (x) vs the study metric (y) per trial, by status; the reference
    trial as a star and a horizontal line at its metric."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    col = f"param.{param}"
    rows = _scored(frame, metric)
    search = rows[rows["kind"] == "search"]
    for status, marker in (("completed", "o"), ("stopped_early", "x")):
        part = search[search["status"] == status]
        if len(part):
            ax.scatter(part[col], part[metric], marker=marker, label=f"search, {status}")
    ref = _reference(rows)
    if ref is not None:
        ax.axhline(ref[metric], label="reference (alpha = beta = 0)", **_REF_STYLE)
        if log and not ref[col] > 0:  # alpha = 0 has no place on a log axis: line only
            pass
        elif pd.notna(ref[col]):
            ax.scatter([ref[col]], [ref[metric]], marker="*", s=160, color="crimson", zorder=3)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(param + (" (log scale)" if log else ""))
    ax.set_ylabel(metric)
    ax.set_title(f"{param} vs {metric}")
    ax.legend(fontsize="small")
    return fig


def _text(value: Any) -> str:
    return (
        f"{value:.3g}"
        if isinstance(value, float | int) and not isinstance(value, bool)
        else str(value)
    )


def _normalise(values: pd.Series, log: bool) -> tuple[np.ndarray, str, str]:
    """Map values to [0, 1] on a linear, log or (strings) categorical axis; returns
    (positions, label of 0, label of 1)."""
    if not pd.api.types.is_numeric_dtype(values):  # categories, in sorted order
        cats = pd.Categorical(values.astype(str))
        n = max(len(cats.categories) - 1, 1)
        first, last = (str(cats.categories[i]) for i in (0, -1))
        return cats.codes / n, first, last
    v = values.astype(float).to_numpy()
    finite = v[np.isfinite(v) & ((v > 0) if log else True)]
    if not len(finite):
        return np.full_like(v, 0.5), "", ""
    lo, hi = float(finite.min()), float(finite.max())
    t = np.log10 if log else (lambda x: x)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = (t(v) - t(lo)) / (t(hi) - t(lo)) if hi > lo else np.full_like(v, 0.5)
    return np.clip(pos, -0.05, 1.05), _text(lo), _text(hi)  # log of 0 (alpha) sits just below


def fig_parallel(
    frame: pd.DataFrame, params: Sequence[str], metric: str, log_params: frozenset[str]
) -> Figure:
    """Parallel coordinates: one axis per parameter then the metric, one line per trial coloured
    by the metric; the reference dashed. Each axis is scaled to the values seen (log where
    searched on a log scale); its ends are labelled with the real values."""
    rows = _scored(frame, metric)
    axes = [*params, metric]
    fig, ax = plt.subplots(figsize=(2.2 * len(axes) + 2, 4.5), layout="constrained")
    cols = [f"param.{p}" for p in params] + [metric]
    scaled = [_normalise(rows[c], p in log_params) for c, p in zip(cols, axes, strict=True)]
    ys = np.stack([s[0] for s in scaled], axis=1) if len(rows) else np.zeros((0, len(axes)))
    norm = (
        plt.Normalize(float(rows[metric].min()), float(rows[metric].max())) if len(rows) else None
    )
    cmap = plt.get_cmap("viridis")
    for y, (_, row) in zip(ys, rows.iterrows(), strict=True):
        if row["kind"] == "reference":
            ax.plot(range(len(axes)), y, **_REF_STYLE, label="reference", zorder=3)
            for i, c in enumerate(cols):  # its own values: alpha = 0 has no place on a log axis
                ax.text(i + 0.03, y[i], _text(row[c]), color="crimson", fontsize="x-small")
        else:
            color = cmap(norm(row[metric])) if norm is not None else "grey"
            ax.plot(range(len(axes)), y, color=color, alpha=0.8)
    for i, (name, (_, lo, hi)) in enumerate(zip(axes, scaled, strict=True)):
        ax.axvline(i, color="black", linewidth=0.8)
        ax.text(i, 1.07, hi, ha="center", fontsize="small")
        ax.text(i, -0.12, lo, ha="center", fontsize="small")
        if name in log_params:
            ax.text(i, -0.19, "log", ha="center", fontsize="x-small", color="grey")
    ax.set_xticks(range(len(axes)), axes)
    ax.set_yticks([])
    ax.set_ylim(-0.22, 1.12)
    ax.set_title(f"parallel coordinates: parameters -> {metric}")
    if norm is not None:
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    if (rows["kind"] == "reference").any():
        fig.legend(loc="outside lower right", fontsize="small")
    return fig


def param_importances(study_dir: str | Path, name: str) -> tuple[dict[str, float] | None, str]:
    """Optuna's PED-ANOVA importances of the stored search study, or ``(None, why not)``."""
    db = StudyFolder(Path(study_dir)).optuna_db
    if not db.exists():
        return None, f"no {db.name} in the study folder: importances need the stored search study"
    study = _stored_study(Path(study_dir), name)
    if study is None:
        return None, f"{db.name} holds no study named {name!r}"
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return None, (
            f"only {len(done)} finished search trial(s) in {db.name}: parameter importance "
            f"needs at least {MIN_IMPORTANCE_TRIALS}"
        )
    # PED-ANOVA (Optuna's default evaluator): deterministic and needs no scikit-learn, which fANOVA
    # and mean-decrease-impurity do and this project does not install.
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as exc:  # e.g. one parameter never varied
        return None, f"Optuna could not estimate importances: {exc}"
    return {k: float(v) for k, v in imp.items()}, f"PED-ANOVA over {len(done)} finished trials"


def fig_importance(importances: Mapping[str, float], note: str = "") -> Figure:
    """Horizontal bars of each parameter's importance (they sum to 1), largest on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(items) + 1.5), layout="constrained")
    ax.barh([k for k, _ in items], [v for _, v in items], color="steelblue")
    ax.set_xlabel("importance (normalised, PED-ANOVA)")
    ax.set_xlim(0, 1)
    ax.set_title("parameter importance" + (f"\n{note}" if note else ""), fontsize="medium")
    return fig


def fig_collapse(frame: pd.DataFrame, top: int = 12) -> Figure:
    """Grouped bars per trial: fused vs text-only vs image-only ``val/ndcg@10`` (top panel) and
    ``val/modality_balance`` (bottom panel; 0 = one view carries everything). Best trials first,
    the reference always shown."""
    rows = _scored(frame, VIEWS["fused"])
    ranked = rows[rows["kind"] != "reference"].head(top - 1)
    rows = pd.concat([rows[rows["kind"] == "reference"], ranked])
    labels = [_label(r) for _, r in rows.iterrows()]
    x, width = np.arange(len(rows)), 0.8 / len(VIEWS)
    fig, (top_ax, bal_ax) = plt.subplots(
        2, 1, figsize=(max(6, 1.1 * len(rows) + 2), 6.5), sharex=True, layout="constrained",
        height_ratios=(2, 1),
    )  # fmt: skip
    for i, (view, col) in enumerate(VIEWS.items()):
        values = rows[col] if col in rows.columns else pd.Series(np.nan, index=rows.index)
        bars = top_ax.bar(x + (i - 1) * width, values.fillna(0), width, label=view)
        top_ax.bar_label(bars, fmt="%.2f", fontsize="x-small")  # a collapsed view is a 0 bar
        _oracle_line(top_ax, rows, col, f"oracle, {view}", bars.patches[0].get_facecolor())
    top_ax.set_ylabel("val/ndcg@10")
    top_ax.set_title("modality collapse: fused vs single-view NDCG@10 per trial")
    top_ax.legend(fontsize="small", ncols=3)
    balance = rows[BALANCE] if BALANCE in rows.columns else pd.Series(np.nan, index=rows.index)
    bal_ax.bar_label(
        bal_ax.bar(x, balance.fillna(0), 0.5, color="grey"), fmt="%.2f", fontsize="small"
    )
    bal_ax.set_ylabel(BALANCE)
    bal_ax.set_ylim(0, 1.05)
    bal_ax.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
    bal_ax.set_xlabel("trial (best first; reference leftmost)")
    return fig


def _oracle_line(ax: Any, rows: pd.DataFrame, metric: str, label: str, colour: Any) -> None:
    """A horizontal line at the generator's oracle of ``metric`` (``vlm2rec.data.oracle``), when
    the study ran on synthetic data: the level each view of a trial is read against."""
    key = metric.replace("/", "/oracle/", 1)
    if key in rows.columns and rows[key].notna().any():
        ax.axhline(float(rows[key].dropna().iloc[0]), color=colour, ls=":", lw=1.2, label=label)


def collapse_note(frame: pd.DataFrame) -> str:
    """HTML warning for a view whose NDCG@10 is exactly 0 in every scored trial: a never-learnt
    view, or (more often) many items sharing one text/image, whose pessimistic ties push every
    target below rank 10; either way the balance at @10 says nothing."""
    zero = [
        view
        for view, col in VIEWS.items()
        if col in frame.columns and frame[col].notna().any() and (frame[col].dropna() == 0).all()
    ]
    if not zero:
        return ""
    return (
        f"<p><b>{html.escape(', '.join(zero))} NDCG@10 is exactly 0 in every trial</b>, so "
        f"{BALANCE} is 0 throughout. Check whether many items share an identical text or image "
        'and ties are ranked pessimistically (eval.ties = "pessimistic": k items sharing one '
        "text put each at rank >= k) before reading this as modality collapse.</p>"
    )


def fig_learning_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    frame: pd.DataFrame,
    metric: str,
    top: int = 5,
) -> Figure:
    """Validation metric per epoch of the ``top`` best ranked search trials and the reference."""
    ranked = frame[frame["rank"].notna() & (frame["kind"] == "search")].head(top)
    shown = pd.concat([frame[frame["kind"] == "reference"], ranked])
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for _, row in shown.iterrows():
        points = [
            (h["epoch"], h[metric])
            for h in histories.get(str(row["trial_id"]), [])
            if metric in h and math.isfinite(h[metric])
        ]
        if not points:
            continue
        epochs, values = zip(*points, strict=True)
        style = _REF_STYLE if row["kind"] == "reference" else {"marker": "o"}
        rank = "" if pd.isna(row["rank"]) else f"#{int(row['rank'])} "
        ax.plot(epochs, values, label=f"{rank}{_label(row)}", **style)
    _oracle_line(ax, frame, metric, "oracle (generator's posterior)", "black")
    _oracle_line(ax, frame, f"{metric}/text", "oracle, text only (collapse level)", "grey")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.set_title(f"learning curves: best {len(ranked)} trials vs reference")
    ax.legend(fontsize="small")
    return fig


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{body}\n"


def _img(folder: str, name: str) -> str:
    return f'<img src="{folder}/{html.escape(name)}" alt="{html.escape(name)}">'


def importance_html(study_dir: Path, name: str, out: Path) -> str:
    """The importance section's HTML: the note, and the bar chart when there is one."""
    imp, note = param_importances(study_dir, name)
    text = f"<p>{html.escape(note)}</p>"
    if imp:
        text += _img(out.name, _save(fig_importance(imp, note), out / "importance.png"))
    return text


def write_report(study_dir: str | Path, top: int = 10) -> Path:
    """Write ``report.html`` and ``report/*.png`` into ``study_dir``; returns the HTML path."""
    study_dir = Path(study_dir)
    data = load_study(study_dir)
    out = study_dir / "report"
    out.mkdir(exist_ok=True)
    f, m = data.frame, data.metric
    body = [_section(f"leaderboard (top {top} and the reference)", leaderboard_html(data, top))]
    scatter = [
        _save(fig_param_scatter(f, p, m, p in data.log_params), out / f"param_{p}.png")
        for p in data.params
    ]
    body.append(
        _section("parameters vs the study metric", " ".join(_img("report", s) for s in scatter))
    )
    if data.params:
        name = _save(fig_parallel(f, data.params, m, data.log_params), out / "parallel.png")
        body.append(_section("parallel coordinates", _img("report", name)))
    body.append(_section("parameter importance", importance_html(study_dir, data.name, out)))
    name = _save(fig_collapse(f, top), out / "collapse.png")
    body.append(_section("modality collapse", _img("report", name) + collapse_note(f)))
    name = _save(fig_learning_curves(data.histories, f, m, min(top, 5)), out / "curves.png")
    body.append(_section("learning curves", _img("report", name)))
    page = (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>study {html.escape(data.name)}"
        "</title><style>body{font-family:sans-serif} table{border-collapse:collapse}"
        " td,th{border:1px solid #ccc;padding:2px 6px} img{max-width:48%}</style></head><body>\n"
        f"<h1>study {html.escape(data.name)}</h1>\n<p>metric {html.escape(m)} ({data.mode}), "
        f"{len(f)} trials</p>\n" + "".join(body) + "</body></html>\n"
    )
    path = study_dir / "report.html"
    path.write_text(page)
    return path


def try_write_report(study_dir: str | Path, top: int = 10) -> Path | None:
    """:func:`write_report` for the end of a study: a failure is a printed warning, never an
    exception, because a finished study must not fail over a plot."""
    try:
        path = write_report(study_dir, top)
    except Exception as exc:  # any plotting or IO error is only a warning here
        print(f"warning: study report not written ({type(exc).__name__}: {exc})", flush=True)
        return None
    print(f"report:       {path}", flush=True)
    return path


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point (``prog``: the name usage lines show); exit 2 without a leaderboard."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("study_dir", type=Path, help="a study folder (holds leaderboard.parquet)")
    p.add_argument("--top", type=int, default=10, help="trials in the table and bar chart")
    args = p.parse_args(argv)
    board = StudyFolder(args.study_dir).leaderboard
    if not board.exists():
        print(f"error: {board}: no leaderboard", file=sys.stderr)
        return 2
    print(f"report: {write_report(args.study_dir, args.top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
