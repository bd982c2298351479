r"""Training-step cost of the VLM2Rec objective vs plain contrastive SFT, side by side.

Variants (same model weights, same batch, same optimiser; METHOD.md §3-6):

* ``plain``: :math:`\alpha = \beta = 0`, run **as** ``vlm2rec.train`` **runs it**: the loop always
  encodes the sequence and all three item views and calls ``losses.vlm2rec_loss``, whose
  :math:`L^T, L^I` (logged) and :math:`L_{topo}` enter the total with weight 0, so backward still
  runs through the text and image views (computing zero gradients there);
* ``vlm2rec``: METHOD.md's defaults, :math:`\alpha = 0.5` (``reweight``), :math:`\beta = 0.1`
  (``strong_to_weak``);
* ``plain_fused``: what the baseline *could* cost: the sequence and the ``both`` view only, and
  :math:`L = L_{CL} = \mathrm{InfoNCE}(u, v^M)` (``losses.info_nce``, the same value as ``plain``;
  checked at start-up and recorded as ``plain_fused_loss_abs_diff``). ``train.py`` has no such
  path; this variant is measured here to show what it would save.

A **step** is what one micro-step of ``train._train_epoch`` does with one worker and no gradient
accumulation: forward of the sequence and the item views (under ``model_eval.autocast``), the loss,
the non-finite check, backward, gradient clipping, ``AdamW.step`` and ``zero_grad`` (the LR
scheduler's step is left out: a scalar update). The **loss-only** time is forward + backward of the
loss alone on fixed embeddings ``[B, D]``.

Timing: one warm-up step per variant, then ``--reps`` rounds; each round runs every variant once, in
an order rotated round by round (so no variant always follows the same one), and the table shows
medians of both wall time and process **CPU time** (``time.process_time``). The process uses
``--threads`` torch threads (default 1): on a shared, overloaded machine a multi-threaded region
waits for its slowest, descheduled thread and wall time mostly measures the other jobs, while the
CPU time of one thread is the work done. Read the **ratios** (measured side by side); absolute times
hold only for the machine recorded in the JSON. ``samples/s`` is per worker (one process with that
many threads): batch size / median step CPU time (and / wall time, in the JSON).

Headline: median step CPU time of ``vlm2rec`` / ``plain`` on ``tiny-qwen2vl``.

Usage::

    python bench/step.py                      # defaults: tiny-qwen2vl and tiny-clip, batch 64
    python bench/step.py --reps 2 --batch-size 8 --models tiny-clip --out /tmp/step.json  # smoke
    python bench/step.py --device cuda --dtype bf16 --models MODEL_FOLDER --out step_bf16.json

On CUDA each timed call is bracketed by ``torch.cuda.synchronize()`` and the headline is the ratio
of **wall** times (process CPU time there is mostly the host waiting for the device).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# bench/ is a folder of scripts, not a package: put it on the path so `common` imports from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import headline, write_result

from vlm2rec.config import RunConfig, load_config, parse_override
from vlm2rec.data.loader import SequenceBatch, train_loader
from vlm2rec.distributed import DistInfo
from vlm2rec.embedder import Embedder
from vlm2rec.losses import info_nce, vlm2rec_loss
from vlm2rec.model_eval import autocast
from vlm2rec.train import build_run

__all__ = ["VARIANTS", "Variant", "loss_fn", "main", "measure_model", "train_step"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "search_spaces" / "base" / "synthetic.toml"

#: variant name -> (item views encoded, loss overrides; ``None`` = fused-only InfoNCE)
Variant = tuple[tuple[str, ...], dict[str, Any] | None]
VARIANTS: dict[str, Variant] = {
    "plain": (("both", "text", "image"), {"alpha": 0.0, "beta": 0.0}),
    "vlm2rec": (
        ("both", "text", "image"),
        {
            "alpha": 0.5,
            "beta": 0.1,
            "penalty_variant": "reweight",
            "topology_variant": "strong_to_weak",
        },
    ),
    "plain_fused": (("both",), None),
}

LossFn = Callable[[Tensor, dict[str, Tensor], Tensor], Tensor]


def loss_fn(cfg: RunConfig, variant: str) -> LossFn:
    """``(u [B, D], {view: [B, D]}, item_ids [B]) -> scalar loss`` of one variant."""
    _, over = VARIANTS[variant]
    lc = cfg.loss
    if over is None:
        return lambda u, v, ids: info_nce(u, v["both"], lc.temperature, key_ids=ids)
    kw: dict[str, Any] = {
        "temperature": lc.temperature,
        "topology_temperature": lc.topology_temperature,
        "penalty_variant": lc.penalty_variant,
        "weak_modality": lc.weak_modality,
        "topology_variant": lc.topology_variant,
        **over,
    }
    return lambda u, v, ids: vlm2rec_loss(u, v["both"], v["text"], v["image"], ids, **kw)["loss"]


def train_step(
    model: Embedder,
    batch: SequenceBatch,
    optimizer: torch.optim.Optimizer,
    loss: LossFn,
    views: tuple[str, ...],
    grad_clip: float,
) -> float:
    """One micro-step as ``train._train_epoch`` does it (one worker); returns the loss value."""
    with autocast(batch.targets.device):
        u, v = model(batch.histories, batch.targets, views)  # [B, D], {view: [B, D]}
        value = loss(u, v, batch.targets)
    if not torch.isfinite(value):
        raise FloatingPointError(f"non-finite loss {float(value)} in the step benchmark")
    value.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(value.detach())


def _loss_only(loss: LossFn, u: Tensor, v: dict[str, Tensor], ids: Tensor) -> None:
    """Forward + backward of the loss on leaf copies of fixed embeddings."""
    u = u.clone().requires_grad_(True)
    v = {k: t.clone().requires_grad_(True) for k, t in v.items()}
    loss(u, v, ids).backward()


def _timed(fn: Callable[[], object], device: torch.device | None = None) -> tuple[float, float]:
    """``(wall s, process CPU s)`` of one call (on CUDA: queued work finished on both ends)."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _rotated(names: Sequence[str], r: int) -> list[str]:
    """Round ``r``'s order: the variant list rotated by ``r`` (no fixed predecessor)."""
    k = r % len(names)
    return [*names[k:], *names[:k]]


def _config(
    model: str,
    batch_size: int,
    data: Path,
    config: Path,
    overrides: Mapping[str, Any],
    device: str = "cpu",
    dtype: str | None = None,
) -> RunConfig:
    over = {
        **overrides,
        "embedder.name": model,
        "train.batch_size": batch_size,
        "train.device": device,
        "data.path": str(data),
    }
    if dtype is not None:
        over["embedder.dtype"] = dtype
    return load_config(config, over)


def _adamw(cfg: RunConfig, model: Embedder) -> torch.optim.Optimizer:
    """The optimiser ``vlm2rec.train`` gives a run of ``cfg`` (without its LR schedule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def _cuda_peak(device: torch.device) -> dict[str, int]:
    """Peak CUDA memory of all four model copies and their optimisers together (CUDA only)."""
    if device.type != "cuda":
        return {}
    return {"peak_cuda_allocated_bytes": torch.cuda.max_memory_allocated(device)}


def measure_model(
    model_name: str,
    batch_size: int,
    reps: int,
    data: Path,
    config: Path = DEFAULT_CONFIG,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> dict[str, Any]:
    """Step and loss-only times of every variant on one model; returns a JSON-ready record.

    ``overrides`` are dotted config paths applied to ``config`` (``data.synthetic.users``...);
    ``device`` is ``train.device``, ``dtype`` (if given) ``embedder.dtype``.
    """
    cfg = _config(model_name, batch_size, data, config, overrides or {}, device, dtype)
    run = build_run(cfg, DistInfo())
    loader = train_loader(run.splits.train, batch_size, 0, 1, cfg.seed)
    batch: SequenceBatch = next(iter(loader)).to(run.device)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    names = list(VARIANTS)
    losses = {n: loss_fn(cfg, n) for n in names}
    models: dict[str, Embedder] = {n: copy.deepcopy(run.embedder) for n in names}
    opts = {n: _adamw(cfg, m) for n, m in models.items()}
    # Fixed embeddings for the loss-only timing, and the check that plain_fused is plain's loss.
    with torch.no_grad():
        u, v = run.embedder(batch.histories, batch.targets)  # [B, D], {view: [B, D]}
        diff = abs(
            float(losses["plain"](u, v, batch.targets))
            - float(losses["plain_fused"](u, {"both": v["both"]}, batch.targets))
        )
    # times[n][kind] = list of (wall s, CPU s), kind in step / loss
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        n: {"step": [], "loss": []} for n in names
    }
    first_loss: dict[str, float] = {}
    for r in range(-1, reps):  # round -1 is the warm-up, not recorded
        for n in _rotated(names, max(r, 0)):
            views = VARIANTS[n][0]

            def step(n: str = n, views: tuple[str, ...] = views) -> None:
                value = train_step(models[n], batch, opts[n], losses[n], views, cfg.optim.grad_clip)
                first_loss.setdefault(n, value)  # the warm-up step: every model at the same weights

            def loss_only(n: str = n, views: tuple[str, ...] = views) -> None:
                _loss_only(losses[n], u, {k: v[k] for k in views}, batch.targets)

            t_step, t_loss = _timed(step, run.device), _timed(loss_only, run.device)
            if r >= 0:
                times[n]["step"].append(t_step)
                times[n]["loss"].append(t_loss)
    trainable = sum(p.numel() for p in run.embedder.parameters() if p.requires_grad)
    return {
        **_cuda_peak(run.device),
        "trainable_params": trainable,
        "plain_fused_loss_abs_diff": diff,
        "variants": _summary(batch_size, times, first_loss),
        "paired_cpu_ratios": _paired(times),
    }


def _paired(times: dict[str, dict[str, list[tuple[float, float]]]]) -> dict[str, list[float]]:
    """Per-round step CPU-time ratios of variants run in the same round (quartiles 25/50/75).

    Each round runs every variant once, back to back, so a round's ratio sees the same load.
    """
    pairs = {
        "vlm2rec/plain": ("vlm2rec", "plain"),
        "vlm2rec/plain_fused": ("vlm2rec", "plain_fused"),
    }
    pairs["plain_fused/plain"] = ("plain_fused", "plain")
    out = {}
    for name, (a, b) in pairs.items():
        ratios = [x[1] / y[1] for x, y in zip(times[a]["step"], times[b]["step"], strict=True)]
        out[name] = _quartiles(ratios)
    return out


def _quartiles(values: list[float]) -> list[float]:
    """``[q25, median, q75]`` (all three equal the value when there is only one)."""
    if len(values) < 2:
        return [values[0]] * 3
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], statistics.median(values), q[2]]


def _median_ms(pairs: list[tuple[float, float]], which: int) -> float:
    return 1e3 * statistics.median(p[which] for p in pairs)


def _summary(
    batch_size: int,
    times: dict[str, dict[str, list[tuple[float, float]]]],
    first_loss: dict[str, float],
) -> dict[str, dict[str, Any]]:
    """Medians (ms) of wall and CPU time per variant, samples/s and ratios to ``plain``."""
    base_wall = _median_ms(times["plain"]["step"], 0)
    base_cpu = _median_ms(times["plain"]["step"], 1)
    out = {}
    for n, t in times.items():
        wall, cpu = _median_ms(t["step"], 0), _median_ms(t["step"], 1)
        out[n] = {
            "step_wall_ms_median": wall,
            "step_cpu_ms_median": cpu,
            "loss_only_wall_ms_median": _median_ms(t["loss"], 0),
            "loss_only_cpu_ms_median": _median_ms(t["loss"], 1),
            "samples_per_s_per_worker_wall": 1e3 * batch_size / wall,
            "samples_per_s_per_worker_cpu": 1e3 * batch_size / cpu,
            "step_cpu_ratio_vs_plain": cpu / base_cpu,
            "step_wall_ratio_vs_plain": wall / base_wall,
            "step_wall_cpu_ms": [[round(1e3 * w, 2), round(1e3 * c, 2)] for w, c in t["step"]],
            "first_loss": first_loss[n],
        }
    return out


def _table(results: dict[str, dict[str, Any]]) -> list[str]:
    w = max(14, *(len(m) + 2 for m in results))  # model column: fits a folder name
    head = (
        f"{'model':<{w}}{'variant':<13}{'step cpu ms':>12}{'wall ms':>10}{'loss cpu ms':>13}"
        f"{'samples/s (cpu)':>17}{'cpu / plain':>13}{'wall / plain':>14}"
    )
    lines = [head, "-" * len(head)]
    for model, rec in results.items():
        for n, v in rec["variants"].items():
            lines.append(
                f"{model:<{w}}{n:<13}{v['step_cpu_ms_median']:>12.1f}"
                f"{v['step_wall_ms_median']:>10.1f}{v['loss_only_cpu_ms_median']:>13.2f}"
                f"{v['samples_per_s_per_worker_cpu']:>17.1f}{v['step_cpu_ratio_vs_plain']:>13.3f}"
                f"{v['step_wall_ratio_vs_plain']:>14.3f}"
            )
    return lines


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", nargs="+", default=["tiny-qwen2vl", "tiny-clip"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=15, help="timed rounds per model (medians)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one worker's share)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="base run config (TOML)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override (dotted path), e.g. data.synthetic.users=60; repeatable",
    )
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="train.device")
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="embedder.dtype (default: the config's)",
    )
    args = p.parse_args(argv)
    if args.reps < 1 or args.batch_size < 2 or args.threads < 1:
        p.error("--reps and --threads must be >= 1 and --batch-size >= 2 (in-batch negatives)")
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark, print the table (headline last), write the JSON; return its path."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        data = args.data or Path(tmp) / "synthetic"
        over = dict(parse_override(text) for text in args.set)
        results = {
            m: measure_model(
                m, args.batch_size, args.reps, data, args.config, over, args.device, args.dtype
            )
            for m in args.models
        }
    lines = _table(results)
    for model, rec in results.items():
        for pair, (q1, med, q3) in rec["paired_cpu_ratios"].items():
            lines.append(
                f"{model}: {pair} step CPU, per-round median {med:.3f} (IQR {q1:.3f}-{q3:.3f})"
            )
    key = "tiny-qwen2vl" if "tiny-qwen2vl" in results else args.models[0]
    clock = "wall" if args.device == "cuda" else "cpu"  # CPU time on CUDA: the host waiting
    ratio = results[key]["variants"]["vlm2rec"][f"step_{clock}_ratio_vs_plain"]
    name = f"vlm2rec / plain step {'CPU' if clock == 'cpu' else 'wall'} time"
    name += f" ({key}, batch {args.batch_size})"
    if args.device != "cpu" or args.dtype is not None:
        name += f" [{args.device}, {args.dtype or 'config dtype'}]"
    head = headline(name, ratio, "x")
    payload = {
        "settings": {
            "models": args.models,
            "batch_size": args.batch_size,
            "reps": args.reps,
            "config": str(args.config.resolve().relative_to(ROOT))
            if args.config.resolve().is_relative_to(ROOT)
            else str(args.config),
            "overrides": args.set,
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "dtype": args.dtype,
            "variants": {n: {"views": list(v), "loss": o} for n, (v, o) in VARIANTS.items()},
        },
        "results": results,
    }
    path = write_result("step", head, payload, args.out)
    print("\n".join(lines))
    print(f"headline: {name} = {ratio:.3f}x")
    return path


if __name__ == "__main__":
    main()
