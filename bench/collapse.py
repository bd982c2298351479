r"""Modality collapse on the synthetic benchmark: plain contrastive SFT vs VLM2Rec readings.

The same data, model, budget and seeds for every method (docs/METHOD.md §3-§9):

* ``baseline``: plain contrastive SFT, :math:`\alpha = \beta = 0`;
* ``vlm2rec``: the defaults, :math:`\alpha = 0.5` (WPCL ``reweight``) + :math:`\beta = 0.1` (CRTR
  ``strong_to_weak``);
* ``wpcl``: :math:`\alpha = 0.5` alone; ``crtr``: :math:`\beta = 0.1` alone; ``hard_negative``:
  WPCL's other reading (:math:`\alpha = 0.5`, :math:`\beta = 0.1`); ``symmetric``: CRTR's
  bidirectional KL (:math:`\alpha = 0.5`, :math:`\beta = 0.1`).

Each run is a subprocess ``python -m vlm2rec.cli train`` with one thread, so ``--workers`` runs share
the cores without oversubscribing them; each run's own command line (with its seed) is recorded so any
row of the result can be reproduced alone. Every run reports the generator's oracles
(``val/oracle/ndcg@10`` and its ``/text`` and ``/image`` views, :mod:`vlm2rec.data.oracle`), so the
table reads each method against the benchmark's ceiling (the full oracle) and its collapse level
(the text-only oracle). It shows, at the first and the last epoch, mean ± standard deviation over
seeds of ``val/ndcg@10`` for the three item views, ``val/modality_balance`` and the image view's
collapse detectors, then checks the collapse criteria seed by seed:

* the baseline collapses: fused within 0.05 of the text-only oracle, image view below
  :data:`NEAR_RANDOM`, and the full oracle at least 0.3 above the text-only one;
* a method rescues: its fused score is at least 0.15 above the baseline's of the same seed;
* no run beats the full oracle by more than 0.02 (a result above its oracle is a bug).

The headline is the largest seed-mean lift of a method's fused ``val/ndcg@10`` over the baseline's at
the last epoch.

Settings (config ``search_spaces/base/synthetic.toml``, the default run: attribute-only text, a
trainable vision tower, permutation transitions; a frozen random tower can neither learn nor
collapse):

* defaults: tiny-clip, 10 epochs (results/collapse.json);
* ``--model tiny-qwen2vl``: the decoder VLM (results/collapse_qwen2vl.json).

Usage::

    python bench/collapse.py                       # 4 methods x 3 seeds, tiny-clip
    python bench/collapse.py --epochs 2 --seeds 0  # smoke
    python bench/collapse.py --reuse               # re-summarise finished runs, train the missing
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import math
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

from common import RESULTS_DIR, headline, mean_std, write_result  # noqa: E402

from vlm2rec.config import config_hash, load_config, parse_override, to_dict  # noqa: E402
from vlm2rec.data.prepare import ensure_dataset  # noqa: E402

__all__ = ["METHODS", "TABLE_KEYS", "build_command", "criteria", "main", "summarise"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "search_spaces" / "base" / "synthetic.toml"

#: method name -> overrides that define it (on top of the base config and the shared overrides)
METHODS: dict[str, dict[str, Any]] = {
    "baseline": {"loss.alpha": 0.0, "loss.beta": 0.0},
    "vlm2rec": {"loss.alpha": 0.5, "loss.beta": 0.1},
    "wpcl": {"loss.alpha": 0.5, "loss.beta": 0.0},
    "crtr": {"loss.alpha": 0.0, "loss.beta": 0.1},
    "hard_negative": {"loss.alpha": 0.5, "loss.beta": 0.1, "loss.penalty_variant": "hard_negative"},
    "symmetric": {"loss.alpha": 0.5, "loss.beta": 0.1, "loss.topology_variant": "symmetric"},
}
DEFAULT_METHODS = ("baseline", "vlm2rec", "wpcl", "crtr")
NEAR_RANDOM = 0.05  #: image-view NDCG@10 below this counts as collapsed (random is about 0.018)

#: (metric key, short column name) of the table, in print order
TABLE_KEYS: tuple[tuple[str, str], ...] = (
    ("val/ndcg@10", "ndcg@10 both"),
    ("val/ndcg@10/text", "text"),
    ("val/ndcg@10/image", "image"),
    ("val/modality_balance", "balance"),
    ("val/anisotropy_image", "aniso img"),
    ("val/erank_image", "erank img"),
    ("val/oracle/ndcg@10", "oracle"),
    ("val/oracle/ndcg@10/text", "oracle text"),
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


def criteria(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The collapse criteria of the module docstring, seed by seed, at each run's last epoch."""
    last = {(r["method"], r["seed"]): r["history"][-1] for r in records if r["history"]}
    seeds = sorted({s for m, s in last if m == "baseline"})
    out: dict[str, Any] = {"collapse": {}, "rescue": {}, "above_oracle": []}
    for seed in seeds:
        b = last[("baseline", seed)]
        fused, text, full = b["val/ndcg@10"], b["val/oracle/ndcg@10/text"], b["val/oracle/ndcg@10"]
        out["collapse"][seed] = {
            "fused_minus_text_oracle": fused - text,
            "image_view": b["val/ndcg@10/image"],
            "headroom": full - text,
            "ok": abs(fused - text) <= 0.05
            and b["val/ndcg@10/image"] < NEAR_RANDOM
            and full - text >= 0.3,
        }
    for (method, seed), h in last.items():
        if h["val/ndcg@10"] > h["val/oracle/ndcg@10"] + 0.02:
            out["above_oracle"].append([method, seed])
        if method != "baseline" and ("baseline", seed) in last:
            lift = h["val/ndcg@10"] - last[("baseline", seed)]["val/ndcg@10"]
            out["rescue"].setdefault(method, {})[seed] = {"lift": lift, "ok": lift >= 0.15}
    return out


def _print_criteria(crit: Mapping[str, Any]) -> None:
    for seed, c in crit["collapse"].items():
        print(
            f"seed {seed}: baseline fused - text oracle {c['fused_minus_text_oracle']:+.3f}, "
            f"image view {c['image_view']:.3f}, headroom {c['headroom']:.3f}: "
            f"{'collapsed' if c['ok'] else 'NOT collapsed'}"
        )
    for method, per_seed in crit["rescue"].items():
        lifts = ", ".join(f"{v['lift']:+.3f}" for v in per_seed.values())
        n_ok = sum(v["ok"] for v in per_seed.values())
        print(f"{method}: lift over baseline per seed {lifts} (>= 0.15 in {n_ok}/{len(per_seed)})")
    print(f"runs above the full oracle + 0.02: {crit['above_oracle'] or 'none'}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="base run config (TOML)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model/shuffle seeds")
    p.add_argument("--users", type=int, default=1000, help="synthetic users (data.synthetic.users)")
    p.add_argument("--model", default="tiny-clip", help="embedder.name")
    p.add_argument("--workers", type=int, default=2, help="runs trained at once (one core each)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
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
    crit = criteria(records)
    _print_criteria(crit)
    base = summary["baseline"]["last"]["val/ndcg@10"][0] if "baseline" in summary else math.nan
    lifts = {m: summary[m]["last"]["val/ndcg@10"][0] - base for m in summary if m != "baseline"}
    best = max(lifts, key=lambda m: lifts[m]) if lifts else "none"
    lift = lifts.get(best, math.nan)
    head = headline(f"best lift over baseline val/ndcg@10 ({best}, last epoch)", lift, "NDCG")
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
        "criteria": crit,
        "wall_s": round(wall, 1),
        "summary": summary,
        "runs": records,
    }
    path = write_result("collapse", head, payload, out=args.out)
    print(f"wrote {path}; total wall {wall:.0f}s")
    print(f"headline: {head['name']} = {lift:+.3f} {head['unit']}")
    return 0 if all(r["returncode"] == 0 for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
