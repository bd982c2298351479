r"""Full-ranking evaluation cost (``ranking.rank_targets``) vs the bare score GEMM, side by side.

For each catalogue size ``N`` (``U`` users, dimension ``D``, ``H`` masked history items per user):

* **ours**: ``vlm2rec.ranking.rank_targets`` with the default ``eval.user_batch_size`` and
  ``eval.item_chunk``: input validation, one GEMM per tile ``[b users] x [(c items; b target
  rows)]`` (``evaluate.score_tile``: on CPU at most ``evaluate.CPU_TILE``), history and target
  masking, and the two counts :math:`|\{j : s_{uj} > s_{ut_u}\}|` and
  :math:`|\{j \ne t_u : s_{uj} = s_{ut_u}\}|` (exact ranks with ties, from which every metric
  follows under either tie rule);
* **gemm**: the floor, :math:`Q_b V_c^\top` alone over the same ``b x c`` tiles in the same order
  (item chunk outer), into one reused buffer, nothing read from it (:func:`gemm_only`): no exact
  full ranking can cost less;
* **gemm_blocks**: the same products over the configured ``user_batch_size x item_chunk`` blocks
  (user block outer), to show that the floor is not slowed down by the smaller tiles.

Each (size, method, repetition) runs in a **fresh subprocess** so that its peak memory can be
measured: the peak extra resident memory is ``ru_maxrss`` after the call minus the resident set
just before it (**RSS delta**; data already built; tracemalloc does not see torch's allocations).
The theoretical tile memory (float32: ours ``2b(c + b)`` flags and scores plus ``(c + b) D`` item
rows, the GEMM ``b c``) is reported next to it, and so is a **probe**: the same measurement of
``rank_targets``' input validation alone (column ``of it checks``). Repetitions alternate the order
(ours, gemm, gemm_blocks), (gemm_blocks, gemm, ours), ... and the table shows medians; ``paired``
is the median over repetitions of ours / gemm within the same repetition.
Workers use ``--threads`` threads (default 1): on a shared machine a multi-threaded region waits
for its slowest, descheduled thread, so one thread and **CPU time** (``time.process_time``) give the
stable ratio; wall times are recorded too.

Headline: median CPU time of ours / gemm at the largest catalogue.

Usage::

    python bench/eval.py                                   # 10k, 100k, 1M items x 10k users
    python bench/eval.py --items 2000 --users 300 --reps 1 --out /tmp/eval.json   # smoke
    python bench/eval.py --items 262144 --users 1024 --cpu-tile 32x4096 --out /tmp/t.json  # tiles
    python bench/eval.py --device cuda --dtype bf16 --out eval_bf16.json     # on a GPU

``--device cuda`` moves the problem (in ``--dtype``) to the GPU, brackets each timed call with
``torch.cuda.synchronize()``, records the peak extra CUDA memory (``torch.cuda.max_memory_allocated``)
and makes the headline the **wall**-time ratio (process CPU time there is mostly the host waiting).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

# bench/ is a folder of scripts, not a package: put it on the path so `common` imports from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import headline, write_result

import vlm2rec.ranking as evaluate
from vlm2rec.config import EvalConfig
from vlm2rec.ranking import _validate, rank_targets, score_tile

__all__ = [
    "METHODS",
    "PROBES",
    "Problem",
    "gemm_only",
    "main",
    "make_problem",
    "run_method",
]

ROOT = Path(__file__).resolve().parent.parent
METHODS: tuple[str, ...] = ("ours", "gemm", "gemm_blocks")
#: memory probe, run once per size: only the input validation that ``rank_targets`` starts with
PROBES: tuple[str, ...] = ("validation",)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Problem(NamedTuple):
    """One seeded evaluation problem (shapes as ``ranking.rank_targets``)."""

    queries: Tensor  #: [U, D] float32
    items: Tensor  #: [N + 1, D] float32, row 0 padding
    targets: Tensor  #: [U] int64 in 1..N
    seen_indptr: Tensor  #: [U + 1] int64 CSR offsets
    seen_items: Tensor  #: [U * H] int64 in 1..N


def make_problem(n_items: int, n_users: int, dim: int, history: int, seed: int = 0) -> Problem:
    """Random unit-norm embeddings, random targets and ``history`` seen items per user.

    Seen items are drawn with replacement (a rare duplicate is harmless: masking is idempotent).
    Normalisation is in place so that building the data leaves no transient peak in the RSS.
    """
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(n_users, dim, generator=g)
    items = torch.randn(n_items + 1, dim, generator=g)
    queries.div_(queries.norm(dim=1, keepdim=True))
    items.div_(items.norm(dim=1, keepdim=True))
    items[0] = 0.0  # padding row
    targets = torch.randint(1, n_items + 1, (n_users,), generator=g)
    seen = torch.randint(1, n_items + 1, (n_users * history,), generator=g)
    indptr = torch.arange(0, n_users * history + 1, history, dtype=torch.long)
    return Problem(queries, items, targets, indptr, seen)


def gemm_only(
    queries: Tensor, items: Tensor, users: int, chunk: int, *, chunks_outer: bool = True
) -> float:
    r"""The blocked products :math:`Q_b V_c^\top` alone, each into one reused ``[b, c]`` buffer and
    nothing read from them: the floor of any exact full ranking. Item chunks form the outer loop
    (as in ``rank_targets``) unless ``chunks_outer`` is false. Returns the first entry of the last
    product (so the work cannot be skipped).

    Shapes: ``queries [U, D]``, ``items [N + 1, D]`` (row 0 padding, skipped).
    """
    cand = items[1:]  # [N, D]
    scores = torch.empty(users * chunk, dtype=torch.float32, device=queries.device)
    user_starts, chunk_starts = range(0, queries.shape[0], users), range(0, cand.shape[0], chunk)
    q = {b0: queries[b0 : b0 + users].float() for b0 in user_starts}  # no copy for float32
    pairs = (  # generators: a list of every pair was 8 MB of the floor's RSS at 1M items
        ((b0, c0) for c0 in chunk_starts for b0 in user_starts)
        if chunks_outer
        else ((b0, c0) for b0 in user_starts for c0 in chunk_starts)
    )
    out, last, v = scores[:1], -1, cand[:0]
    for b0, c0 in pairs:
        if c0 != last:  # converted once per run of the same chunk (no copy for float32)
            last, v = c0, cand[c0 : c0 + chunk].float()  # [c, D]
        out = scores[: q[b0].shape[0] * v.shape[0]].view(q[b0].shape[0], v.shape[0])
        torch.mm(q[b0], v.T, out=out)  # [b, c]
    return float(out.view(-1)[0])


def run_method(method: str, p: Problem, user_batch_size: int, item_chunk: int) -> Tensor:
    """Run ``ours`` (``[U, 2]``: each target's first rank and its ties), ``gemm`` or
    ``gemm_blocks`` (products only; returns one number) or the ``validation`` probe (returns the
    targets) on ``p``."""
    if method == "ours":
        ranks = rank_targets(
            p.queries,
            p.items,
            p.targets,
            p.seen_indptr,
            p.seen_items,
            user_batch_size=user_batch_size,
            item_chunk=item_chunk,
        )
        return torch.stack([ranks.first, ranks.ties], dim=1)
    if method == "gemm":
        users, chunk = score_tile(p.queries.device, user_batch_size, item_chunk)
        return torch.tensor([gemm_only(p.queries, p.items, users, chunk)])
    if method == "gemm_blocks":
        value = gemm_only(p.queries, p.items, user_batch_size, item_chunk, chunks_outer=False)
        return torch.tensor([value])
    if method == "validation":  # rank_targets' own checks, alone (a private helper, on purpose)
        _validate(p.queries, p.items, p.targets, p.seen_indptr, p.seen_items)
        return p.targets
    raise ValueError(f"method: expected one of {METHODS + PROBES}, got {method!r}")


def _rss_bytes() -> int:
    """Current resident set size (Linux ``/proc/self/statm``; page count x page size)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _to(p: Problem, device: torch.device, dtype: torch.dtype) -> Problem:
    """The problem on ``device`` with embeddings in ``dtype`` (no copy for CPU float32)."""
    q, items = p.queries.to(device, dtype), p.items.to(device, dtype)
    return Problem(q, items, *(t.to(device) for t in p[2:]))


def _tile_arg(text: str) -> tuple[int, int]:
    users, _, items = text.partition("x")
    tile = (int(users), int(items))
    if min(tile) < 1:
        raise argparse.ArgumentTypeError(f"--cpu-tile {text!r}: expected USERSxITEMS, both >= 1")
    return tile


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measured call in this (fresh) process: times and peak extra resident memory."""
    torch.set_num_threads(args.threads)
    if args.cpu_tile is not None:
        evaluate.CPU_TILE = args.cpu_tile  # this process only: the tile sweep
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    cuda = dev.type == "cuda"
    p = _to(make_problem(args.items[0], args.users, args.dim, args.history, args.seed), dev, dtype)
    fused = evaluate.counts_with_kernel(dev, args.items[0] * args.users)
    kernel = _load_kernel() if args.method == "ours" and fused else None
    warm = make_problem(512, 64, args.dim, 4, args.seed + 1)  # first-call costs (BLAS init)
    run_method(args.method, _to(warm, dev, dtype), args.user_batch_size, min(args.item_chunk, 256))
    cuda_before = 0
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        cuda_before = torch.cuda.memory_allocated(dev)
    before = _rss_bytes()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run_method(args.method, p, args.user_batch_size, args.item_chunk)
    if cuda:
        torch.cuda.synchronize(dev)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out = {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_extra_rss_bytes": max(0, peak - before),
        "peak_rss_bytes": peak,
    }
    if cuda:
        out["peak_extra_cuda_bytes"] = torch.cuda.max_memory_allocated(dev) - cuda_before
    if kernel is not None:
        out["kernel_load"] = kernel
    return out


def _load_kernel() -> dict[str, float]:
    """Import and first-call the numba kernel, which ``rank_targets`` pays once per process:
    its CPU seconds and resident bytes, reported apart from the measured call."""
    rss0, cpu0 = _rss_bytes(), time.process_time()
    from vlm2rec.tile_count import count_tile

    count_tile(np.zeros((1, 2), np.float32), 1, np.zeros(0, np.int64), np.zeros(2, np.int32))
    return {"cpu_s": time.process_time() - cpu0, "rss_bytes": _rss_bytes() - rss0}


def _spawn(args: argparse.Namespace, n_items: int, method: str) -> dict[str, Any]:
    """Run one measurement in a subprocess and return its JSON record."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--method", method]
    cmd += ["--items", str(n_items), "--users", str(args.users), "--dim", str(args.dim)]
    cmd += ["--history", str(args.history), "--seed", str(args.seed)]
    cmd += ["--user-batch-size", str(args.user_batch_size), "--item-chunk", str(args.item_chunk)]
    cmd += ["--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype]
    if args.cpu_tile is not None:
        cmd += ["--cpu-tile", "x".join(map(str, args.cpu_tile))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"eval worker {method} N={n_items} failed:\n{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _tile_bytes(args: argparse.Namespace, n_items: int) -> dict[str, int]:
    """Float32 bytes of one tile: ours (flags and scores, item rows), the GEMM's output."""
    dev = torch.device(args.device)
    if args.cpu_tile is not None and dev.type == "cpu":
        b, c = min(args.user_batch_size, args.cpu_tile[0]), min(args.item_chunk, args.cpu_tile[1])
    else:
        b, c = score_tile(dev, args.user_batch_size, args.item_chunk)
    b, c = min(b, args.users), min(c, n_items)
    return {"tile_users": b, "tile_items": c, "ours": 4 * (2 * b * (c + b) + (c + b) * args.dim),
            "gemm": 4 * b * c}  # fmt: skip


def _measure_size(args: argparse.Namespace, n_items: int, reps: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for r in range(reps):
        for method in METHODS if r % 2 == 0 else METHODS[::-1]:  # alternate the order
            runs[method].append(_spawn(args, n_items, method))
            print(f"  N={n_items} rep {r + 1}/{reps} {method}: {runs[method][-1]}", flush=True)
    med = {
        m: {key: statistics.median(x[key] for x in rs) for key in rs[0] if key != "kernel_load"}
        for m, rs in runs.items()
    }
    loads = [x["kernel_load"] for x in runs["ours"] if "kernel_load" in x]
    probe = _spawn(args, n_items, "validation")
    print(f"  N={n_items} validation probe: {probe}", flush=True)
    paired = [o["cpu_s"] / g["cpu_s"] for o, g in zip(runs["ours"], runs["gemm"], strict=True)]
    return {
        "items": n_items,
        "users": args.users,
        "reps": reps,
        "median": med,
        "runs": runs,
        "validation_probe": probe,
        "cpu_ratio": med["ours"]["cpu_s"] / med["gemm"]["cpu_s"],
        "cpu_ratio_paired": statistics.median(paired),
        "cpu_ratio_vs_blocks": med["ours"]["cpu_s"] / med["gemm_blocks"]["cpu_s"],
        "wall_ratio": med["ours"]["wall_s"] / med["gemm"]["wall_s"],
        "theory_tile_bytes": _tile_bytes(args, n_items),
        "theory_unblocked_bytes": 4 * args.users * n_items,
        "kernel_load": (
            {key: statistics.median(x[key] for x in loads) for key in loads[0]} if loads else None
        ),
    }


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        f"{'items':>9}{'users':>7}{'ours cpu s':>12}{'gemm cpu s':>12}{'blocks cpu s':>14}"
        f"{'ours/gemm':>11}{'paired':>8}{'ours/blocks':>13}{'wall ratio':>12}"
        f"{'ours dRSS MB':>14}{'of it checks':>14}{'gemm dRSS MB':>14}{'tile MB':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        o, g, gb = (r["median"][m] for m in METHODS)
        lines.append(
            f"{r['items']:>9}{r['users']:>7}{o['cpu_s']:>12.2f}{g['cpu_s']:>12.2f}"
            f"{gb['cpu_s']:>14.2f}{r['cpu_ratio']:>11.3f}{r['cpu_ratio_paired']:>8.3f}"
            f"{r['cpu_ratio_vs_blocks']:>13.3f}{r['wall_ratio']:>12.3f}"
            f"{o['peak_extra_rss_bytes'] / 2**20:>14.1f}"
            f"{r['validation_probe']['peak_extra_rss_bytes'] / 2**20:>14.1f}"
            f"{g['peak_extra_rss_bytes'] / 2**20:>14.1f}"
            f"{r['theory_tile_bytes']['ours'] / 2**20:>9.2f}"
        )
    for r in rows:
        if r["kernel_load"]:
            load = r["kernel_load"]
            lines.append(
                f"N={r['items']}: ours counted with the numba kernel; loading it took "
                f"{load['cpu_s']:.2f} s CPU and {load['rss_bytes'] / 2**20:.0f} MB resident once "
                "per process, before the measured call"
            )
    return lines


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ev = EvalConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--history", type=int, default=50, help="masked seen items per user")
    p.add_argument("--user-batch-size", type=int, default=ev.user_batch_size)
    p.add_argument("--item-chunk", type=int, default=ev.item_chunk)
    p.add_argument("--cpu-tile", type=_tile_arg, default=None, help="override CPU_TILE, UxI")
    p.add_argument("--reps", type=int, default=3, help="repetitions per method (medians)")
    p.add_argument("--largest-reps", type=int, default=3, help="repetitions at the largest size")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="embedding dtype")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS + PROBES, default="ours", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.items) < 1 or min(args.users, args.dim, args.reps, args.threads) < 1:
        p.error("--items, --users, --dim, --reps, --threads must be >= 1")
    if min(args.user_batch_size, args.item_chunk, args.largest_reps) < 1:
        p.error("--user-batch-size, --item-chunk, --largest-reps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Run the benchmark (or, with ``--worker``, one measurement); print the table; write JSON."""
    args = _parse(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return None
    sizes = sorted(args.items)
    rows = [
        _measure_size(
            args, n, args.largest_reps if n == sizes[-1] and len(sizes) > 1 else args.reps
        )
        for n in sizes
    ]
    lines = _table(rows)
    clock = "wall" if args.device == "cuda" else "cpu"  # CPU time on CUDA: the host waiting
    ratio = rows[-1][f"{clock}_ratio"]
    name = f"rank_targets / bare score GEMM {'CPU' if clock == 'cpu' else 'wall'} time"
    name += f" ({sizes[-1]} items x {args.users} users)"
    if (args.device, args.dtype) != ("cpu", "fp32"):
        name += f" [{args.device}, {args.dtype}]"
    head = headline(name, ratio, "x")
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "method", "out")}
    path = write_result("eval", head, {"settings": settings, "results": rows}, args.out)
    print("\n".join(lines))
    print(f"headline: {name} = {ratio:.3f}x")
    return path


if __name__ == "__main__":
    main()
