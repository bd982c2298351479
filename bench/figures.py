"""The README's pictures, drawn from the committed results (``bench/results/*.json``), nothing rerun.

* ``docs/img/collapse.png``: per ``collapse*.json`` setting, validation NDCG@10 of the fused
  (``both``) view and of the image-only view per epoch, plain contrastive vs VLM2Rec, mean over seeds
  with a min-max band, against the generator's full and text-only oracles: the collapse picture;
* ``docs/img/hpo.png``: from ``hpo.json``, the best ``val/ndcg@10`` found as the epoch budget grows,
  per search method, mean over sampler seeds with a min-max band.

Usage::

    python bench/figures.py                 # both figures into docs/img/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hpo import best_so_far

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
#: result file -> panel title
COLLAPSE = {
    "collapse.json": "tiny-clip",
    "collapse_qwen2vl.json": "tiny-qwen2vl, joint fusion",
    "collapse_qwen2vl_external.json": "tiny-qwen2vl, external fusion",
}
LABELS = {"baseline": "plain contrastive", "vlm2rec": "VLM2Rec"}
COLOURS = {"baseline": "tab:grey", "vlm2rec": "tab:blue"}


def _band(ax: Any, curves: Sequence[Sequence[float]], x0: int, **style: Any) -> None:
    """Mean line and min-max band of equally long curves, x = x0, x0 + 1, ..."""
    arr = np.asarray(curves, dtype=float)
    x = np.arange(x0, x0 + arr.shape[1])
    ax.plot(x, arr.mean(axis=0), **style)
    ax.fill_between(x, arr.min(axis=0), arr.max(axis=0), color=style["color"], alpha=0.15, lw=0)


def _method_curves(runs: Sequence[Mapping[str, Any]], method: str, key: str) -> list[list[float]]:
    curves = [[h[key] for h in r["history"]] for r in runs if r["method"] == method]
    n = min(len(c) for c in curves)  # seeds that stopped early are cut to the shortest
    return [c[:n] for c in curves]


def collapse_figure(files: Mapping[str, str], out: Path) -> Path:
    found = {name: title for name, title in files.items() if (RESULTS / name).exists()}
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.6), squeeze=False)
    for ax, (name, title) in zip(axes[0], found.items(), strict=True):
        doc = json.loads((RESULTS / name).read_text())
        for method in ("baseline", "vlm2rec"):
            colour = COLOURS[method]
            fused = _method_curves(doc["runs"], method, "val/ndcg@10")
            image = _method_curves(doc["runs"], method, "val/ndcg@10/image")
            _band(ax, fused, 1, color=colour, lw=2, label=f"{LABELS[method]}: fused")
            _band(
                ax, image, 1, color=colour, lw=1.5, ls="--", label=f"{LABELS[method]}: image only"
            )
        last = [r["history"][-1] for r in doc["runs"] if r["history"]]
        for key, ls, label in (
            ("val/oracle/ndcg@10", ":", "oracle (full)"),
            ("val/oracle/ndcg@10/text", "-.", "oracle (text only)"),
        ):
            ax.axhline(
                float(np.mean([h[key] for h in last])), color="k", lw=0.8, ls=ls, label=label
            )
        seeds = sorted({r["seed"] for r in doc["runs"]})
        n = len(seeds)
        ax.set(title=f"{title} ({n} seed{'s' * (n != 1)})", xlabel="epoch", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("val/ndcg@10")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "Modality collapse: fused vs image-only retrieval (bench/collapse.py)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def hpo_figure(path: Path, out: Path) -> Path:
    doc = json.loads(path.read_text())
    budget = doc["setting"]["budget_epochs"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    colours = {"tpe_asha": "tab:blue", "random_asha": "tab:orange", "random": "tab:grey"}
    for method, colour in colours.items():
        runs = [r for r in doc["runs"] if r["method"] == method]
        if runs:
            curves = [best_so_far(r["reports"], budget) for r in runs]
            _band(ax, curves, 1, color=colour, lw=2, label=f"{method} ({len(runs)} seeds)")
    ax.set(xlabel="epochs spent (all trials)", ylabel="best val/ndcg@10 found")
    ax.set_title("Search methods at equal epoch budget (bench/hpo.py)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="figure folder")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = [collapse_figure(COLLAPSE, args.out / "collapse.png")]
    if (RESULTS / "hpo.json").exists():
        written.append(hpo_figure(RESULTS / "hpo.json", args.out / "hpo.png"))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
