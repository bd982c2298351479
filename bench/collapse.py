r"""Modality collapse on the synthetic benchmark: plain contrastive SFT vs VLM2Rec (METHOD.md §7, §9).

Two methods, the same data, model, budget and seeds, trained side by side:

* ``baseline``: plain contrastive SFT, :math:`\alpha = \beta = 0` (METHOD.md §3);
* ``vlm2rec``: METHOD.md's defaults, :math:`\alpha = 0.5` (WPCL ``reweight``), :math:`\beta = 0.1`
  (CRTR ``strong_to_weak``).

Each run is a subprocess ``python -m vlm2rec.cli train`` with one thread, so ``--workers`` runs share
the cores without oversubscribing them; each run's own command line (with its seed) is recorded so any
row of the result can be reproduced alone. The table shows, at the first and the last epoch, the mean
± standard deviation over seeds of ``val/ndcg@10`` for the ``both``, ``text`` and ``image`` item views,
``val/modality_balance`` and the image view's collapse detectors (``val/anisotropy_image``,
``val/erank_image``). The last printed line is the headline: the ratio

.. math:: r = \frac{\overline{\mathrm{NDCG@10}}_{\text{vlm2rec}}}{\overline{\mathrm{NDCG@10}}_{\text{baseline}}}

of the seed-mean fused ``val/ndcg@10`` at the last epoch (``r > 1``: VLM2Rec ahead).

Note: with pessimistic ties (METHOD.md §1) the text view of items that share a text (every brand x
colour text is shared by shapes x copies items in the collapse setting) ranks them all ahead of the
target, so ``val/ndcg@10/text`` is 0 and ``val/modality_balance`` is 0 by construction there; the
fused score and the image-view detectors carry the signal.

Headroom: the table ends with the **Bayes ceiling**, the ``val/ndcg@10`` of the generator's own
posterior given the same visible history (:func:`bayes_ceiling`). A method at the ceiling cannot be
beaten; a ratio near 1 with both methods at the ceiling says the setting is saturated, not that the
methods are equal in general.

Settings (config ``search_spaces/base/collapse.toml``: METHOD.md §9's shortcut text with a trainable
vision tower; a frozen random tower can neither learn nor collapse):

* defaults, ``image_signal = 0.9``: both methods reach the ceiling (results/collapse.json);
* ``--model tiny-qwen2vl``: the decoder VLM of the issue, 2x slower per epoch
  (results/collapse_qwen2vl.json);
* ``--set data.synthetic.image_signal=0.5 --epochs 6``: the image carries less signal and is learned
  late, leaving headroom (results/collapse_image_signal_0.5.json).

Usage::

    python bench/collapse.py                       # defaults: ~12 min on 2 lightly loaded cores
    python bench/collapse.py --epochs 2 --seeds 0  # smoke
    python bench/collapse.py --reuse               # re-summarise finished runs, train the missing
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts, not a package: put it (and the repository, for `vlm2rec`) on the
# path so the script runs from anywhere.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import numpy as np  # noqa: E402
from common import RESULTS_DIR, headline, mean_std, write_result  # noqa: E402

from vlm2rec.config import RunConfig, config_hash, load_config, parse_override, to_dict  # noqa: E402
from vlm2rec.data.splits import make_splits  # noqa: E402
from vlm2rec.data.synthetic import ensure_dataset, item_attributes  # noqa: E402

__all__ = ["METHODS", "TABLE_KEYS", "build_command", "main", "summarise"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "search_spaces" / "base" / "collapse.toml"

#: method name -> overrides that define it (on top of the base config and the shared overrides)
METHODS: dict[str, dict[str, Any]] = {
    "baseline": {"loss.alpha": 0.0, "loss.beta": 0.0},
    "vlm2rec": {
        "loss.alpha": 0.5,
        "loss.beta": 0.1,
        "loss.penalty_variant": "reweight",
        "loss.topology_variant": "strong_to_weak",
    },
}

#: (metric key, short column name) of the table, in print order
TABLE_KEYS: tuple[tuple[str, str], ...] = (
    ("val/ndcg@10", "ndcg@10 both"),
    ("val/ndcg@10/text", "text"),
    ("val/ndcg@10/image", "image"),
    ("val/modality_balance", "balance"),
    ("val/anisotropy_image", "aniso img"),
    ("val/erank_image", "erank img"),
)


def _fmt_value(value: Any) -> str:
    """A value as ``--set`` reads it (TOML): strings quoted only when TOML would not parse them."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def build_command(
    config: Path, overrides: Mapping[str, Any], out: Path, python: str = sys.executable
) -> list[str]:
    """The single-run CLI command that trains one (method, seed) cell."""
    cmd = [python, "-m", "vlm2rec.cli", "train", "--config", str(config), "--out", str(out)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={_fmt_value(value)}"]
    return cmd


def _one_thread_env() -> dict[str, str]:
    # One BLAS/OpenMP thread per run: --workers runs then use --workers cores without contention.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _read_history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _same_run(out: Path, cell: Mapping[str, Any]) -> bool:
    """Whether ``out`` holds a finished run of exactly this cell's resolved config (``--reuse``)."""
    if not (out / "final.json").exists() or not (out / "config.json").exists():
        return False
    done, want = json.loads((out / "config.json").read_text()), dict(cell["config"])
    # The dataset folder may be spelled relative or absolute: compare where it resolves to.
    for cfg in (done, want):
        cfg["data"] = {**cfg["data"], "path": str((ROOT / cfg["data"]["path"]).resolve())}
    return bool(done == want)


def _run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, seed) run in a subprocess (or, with ``reuse``, read a finished identical
    run); return its record: history, test metrics, wall time, return code."""
    out = ROOT / cell["out"]
    out.mkdir(parents=True, exist_ok=True)
    reused = bool(cell["reuse"]) and _same_run(out, cell)
    t0 = time.perf_counter()
    rc = 0
    if not reused:
        with (out / "console.log").open("w") as log:
            rc = subprocess.run(
                cell["argv"], cwd=ROOT, env=_one_thread_env(), stdout=log, stderr=subprocess.STDOUT
            ).returncode
    history = _read_history(out)
    wall = sum(h.get("time/epoch_s", 0.0) for h in history) if reused else time.perf_counter() - t0
    final = json.loads((out / "final.json").read_text()) if (out / "final.json").exists() else {}
    record = {k: cell[k] for k in ("method", "seed", "command")}
    record.update(returncode=rc, reused=reused, wall_s=round(wall, 1), history=history)
    record["test"] = final.get("test", {})
    record["best_epoch"] = final.get("best_epoch")
    log_path = out / "console.log"
    tail = log_path.read_text().splitlines()[-3:] if log_path.exists() else []
    status = "ok" if rc == 0 else f"FAILED rc={rc}: {' | '.join(tail)}"
    print(f"[{cell['method']} seed {cell['seed']}] {wall:.0f}s {status}{' (reused)' * reused}")
    return record


def _rel(path: Path) -> Path:
    """``path`` relative to the repository when inside it: recorded commands then run anywhere."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _cells(args: argparse.Namespace, shared: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Seed-major order so that, if the job is cut short, finished runs come in method pairs."""
    cells = []
    for seed in args.seeds:
        for method in args.methods:
            over = {**shared, **METHODS[method], "seed": seed}
            out = _rel(args.runs) / f"{method}-s{seed}"
            argv = build_command(_rel(args.config), over, out)
            shown = ["python", *argv[1:]]  # the interpreter path is this machine's only
            cells.append(
                {
                    "method": method,
                    "seed": seed,
                    "out": str(out),
                    "argv": argv,
                    "command": shlex.join(shown),
                    "config": to_dict(load_config(args.config, over)),
                    "reuse": args.reuse,
                }
            )
    return cells


def summarise(
    records: Sequence[Mapping[str, Any]], methods: Sequence[str]
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{method: {"first"|"last": {key: [mean, std, n]}}}`` over the runs that finished."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for method in methods:
        runs = [r for r in records if r["method"] == method and r["history"]]
        out[method] = {}
        for when, idx in (("first", 0), ("last", -1)):
            row = {}
            for key, _ in TABLE_KEYS:
                vals = [float(r["history"][idx][key]) for r in runs if key in r["history"][idx]]
                m, s = mean_std(vals)
                row[key] = [m, s, float(len(vals))]
            out[method][when] = row
    return out


def _print_table(summary: Mapping[str, Any], epochs: Mapping[str, tuple[int, int]]) -> None:
    cols = [name for _, name in TABLE_KEYS]
    head = f"{'method':<9} {'epoch':>5} " + " ".join(f"{c:>15}" for c in cols)
    print(head)
    print("-" * len(head))
    for method, rows in summary.items():
        for when, row in rows.items():
            epoch = epochs[method][0 if when == "first" else 1]
            cells = " ".join(f"{row[k][0]:>7.3f} ± {row[k][1]:<5.3f}" for k, _ in TABLE_KEYS)
            print(f"{method:<9} {epoch:>5} {cells}")


def _colour_posterior_likelihood(
    histories: np.ndarray, colour_of: np.ndarray, rho_c: float, n_colours: int
) -> np.ndarray:
    """``[U, N]``-ready ``P(next colour = c | visible history)``: ``[U, C]`` over colours ``c``."""
    like = rho_c * np.eye(n_colours) + (1 - rho_c) / n_colours  # [f, c] = P(c | favourite f)
    post = np.ones((len(histories), n_colours))  # uniform prior over the favourite colour
    for col in range(histories.shape[1]):
        h = histories[:, col]
        real = h > 0  # left padding carries no evidence
        post[real] *= like[:, colour_of[h[real]]].T  # [U', f]
    post /= post.sum(axis=1, keepdims=True)
    return post @ like  # [U, c]


def bayes_ceiling(cfg: RunConfig) -> float:
    r"""Expected ``val/ndcg@10`` of the generative model's own posterior: what a perfect fused
    embedding could reach from the same visible history (random tie-breaking).

    .. math:: p(j \mid h) \propto \bigl(\rho_I[s_j = s_L] + \tfrac{1-\rho_I}{S}\bigr)
              \bigl(\rho_T[b_j = b_L] + \tfrac{1-\rho_T}{B}\bigr)
              \sum_f p(f \mid h)\bigl(\rho_C[c_j = f] + \tfrac{1-\rho_C}{C}\bigr)

    with :math:`s_L, b_L` the newest history item's shape and brand and :math:`p(f \mid h)` the
    posterior of the favourite colour from the colours of the (at most ``data.history_length``)
    visible history items. History items are excluded as in the evaluation; a target tied with
    :math:`g` others behind :math:`a` better items takes each rank :math:`a+1 .. a+g+1` equally often.
    Valid for full attribute grids (every cell holds items), as in the collapse setting.

    Shapes: scores ``[U, N]`` (U validation users, N items).
    """
    s = cfg.data.synthetic
    ds = ensure_dataset(cfg.data)
    val = make_splits(ds.interactions, cfg.data.history_length, cfg.data.min_sequence_length).val
    attrs = item_attributes(s)  # [N + 1, 3], row 0 = padding
    last = attrs[val.histories[:, -1]]  # [U, 3]
    grid = attrs[1:]  # [N, 3], row r = item id r + 1
    p_shape = (
        s.image_signal * (grid[None, :, 0] == last[:, None, 0]) + (1 - s.image_signal) / s.shapes
    )
    p_brand = (
        s.text_signal * (grid[None, :, 1] == last[:, None, 1]) + (1 - s.text_signal) / s.brands
    )
    p_colour = _colour_posterior_likelihood(val.histories, attrs[:, 2], s.colour_signal, s.colours)
    scores = p_shape * p_brand * p_colour[:, grid[:, 2]]  # [U, N]
    gains = []
    for u in range(len(val)):
        row = scores[u].copy()
        row[val.seen(u) - 1] = -np.inf
        t = row[val.targets[u] - 1]
        ahead, ties = int((row > t).sum()), int((row == t).sum()) - 1
        ranks = np.arange(ahead + 1, ahead + ties + 2)
        gains.append(np.mean(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0.0)))
    return float(np.mean(gains))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="base run config (TOML)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model/shuffle seeds")
    p.add_argument("--users", type=int, default=1000, help="synthetic users (data.synthetic.users)")
    p.add_argument("--model", default="tiny-clip", help="embedder.name")
    p.add_argument("--workers", type=int, default=2, help="runs trained at once (one core each)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override, both methods",
    )
    p.add_argument(
        "--runs", type=Path, default=ROOT / "runs" / "bench-collapse", help="run folders"
    )
    p.add_argument("--data-root", type=Path, default=ROOT / "data", help="where datasets are built")
    p.add_argument(
        "--reuse", action="store_true", help="read finished runs of identical config, don't retrain"
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "collapse.json", help="result JSON")
    return p.parse_args(argv)


def _shared_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Overrides both methods share; the dataset folder is named by its knobs so that a change of
    ``--users`` (or of a ``data.synthetic.*`` knob) never meets a folder built with other knobs."""
    extra = dict(parse_override(s) for s in args.set)
    shared: dict[str, Any] = {
        "embedder.name": args.model,
        "train.epochs": args.epochs,
        "data.synthetic.users": args.users,
        **extra,
    }
    synth = load_config(args.config, shared).data.synthetic
    shared["data.path"] = str(_rel(args.data_root) / f"bench-collapse-{config_hash(synth)}")
    return shared


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    for name in ("config", "runs", "data_root", "out"):  # resolve against the caller's cwd, then
        setattr(args, name, getattr(args, name).resolve())
    os.chdir(ROOT)  # work from the repository, as the recorded (relative) commands do
    shared = _shared_overrides(args)
    run_cfg = load_config(args.config, shared)
    ensure_dataset(run_cfg.data)  # build once, before the runs race
    ceiling = bayes_ceiling(run_cfg)
    print(f"Bayes ceiling of val/ndcg@10 (generative posterior, random ties): {ceiling:.3f}")
    cells = _cells(args, shared)
    print(f"{len(cells)} runs, {args.workers} at a time; logs under {args.runs}", flush=True)
    t0 = time.perf_counter()
    with futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
        records = list(pool.map(_run_cell, cells))
    wall = time.perf_counter() - t0
    summary = summarise(records, args.methods)
    epochs = {
        m: (1, max((len(r["history"]) for r in records if r["method"] == m), default=0))
        for m in args.methods
    }
    _print_table(summary, epochs)
    print(f"{'ceiling':<9} {'-':>5} {ceiling:>7.3f}  (Bayes posterior of the generator, val users)")
    ratio = float("nan")
    if {"baseline", "vlm2rec"} <= set(args.methods):
        base = summary["baseline"]["last"]["val/ndcg@10"][0]
        ratio = summary["vlm2rec"]["last"]["val/ndcg@10"][0] / base if base > 0 else float("nan")
    head = headline("vlm2rec / baseline val/ndcg@10 (both view, last epoch)", ratio, "x")
    payload = {
        "setting": {
            "config": str(_rel(args.config)),
            "shared_overrides": shared,
            "methods": {m: METHODS[m] for m in args.methods},
            "epochs": args.epochs,
            "seeds": args.seeds,
            "workers": args.workers,
            "threads_per_run": 1,
        },
        "bayes_ceiling_val_ndcg@10": ceiling,
        "wall_s": round(wall, 1),
        "summary": summary,
        "runs": records,
    }
    path = write_result("collapse", head, payload, out=args.out)
    print(f"wrote {path}; total wall {wall:.0f}s")
    print(f"headline: {head['name']} = {ratio:.3f}{head['unit']}")
    return 0 if all(r["returncode"] == 0 for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
