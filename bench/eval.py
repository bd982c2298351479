r"""Full-ranking evaluation cost (``evaluate.rank_targets``) vs the floor on the same hardware.

For each catalogue size ``N`` (``U`` users, dimension ``D``, ``H`` masked history items per user):

* **ours**: ``vlm2rec.evaluate.rank_targets`` with the default ``eval.user_batch_size`` and
  ``eval.item_chunk``: validation, one GEMM per ``[user block x (item chunk; target rows)]``, history
  and target masking, and the two counts :math:`|\{j : s_{uj} > s_{ut_u}\}|` and
  :math:`|\{j \ne t_u : s_{uj} = s_{ut_u}\}|` (exact ranks with ties, from which every metric
  follows under either tie rule);
* **floor**: what any full-ranking evaluator must at least do: the same blocks, one matrix product
  :math:`Q_b V_c^\top` per block and a running top-``k`` (``torch.topk`` per chunk, merged), **no**
  masking, no targets, no validation (:func:`floor_topk`);
* **gemm**: the blocked matrix products alone (:func:`gemm_only`), a lower bound of any exact
  full ranking, shown to split the floor into product and top-``k``.

Each (size, method, repetition) runs in a **fresh subprocess** so that its peak memory can be
measured: the peak extra resident memory is ``ru_maxrss`` after the call minus the resident set
just before it (data already built; tracemalloc does not see torch's allocations). The theoretical
score-block memory (float32 ``B x (C + B)`` for ours, ``B x C`` for the floor) and the unblocked
``U x N`` score matrix are reported next to it, and so is a **probe**: the same measurement of
``rank_targets``' input validation alone (column ``of it checks``), since ``torch.isfinite`` over
the item matrix makes temporaries of about 1.75x its size, far more than one score block.
Repetitions alternate the order (ours, floor, gemm), (gemm, floor, ours), ... and the table shows
medians; ``wall ratio`` is ours / floor in wall time.
Workers use ``--threads`` threads (default 1): on a shared machine a multi-threaded region waits
for its slowest, descheduled thread, so one thread and **CPU time** (``time.process_time``) give the
stable ratio; wall times are recorded too.

Headline: median CPU time of ours / floor at the largest catalogue.

Usage::

    python bench/eval.py                                   # 10k, 100k, 1M items x 10k users
    python bench/eval.py --items 2000 --users 300 --reps 1 --out /tmp/eval.json   # smoke
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

import torch
from torch import Tensor

# bench/ is a folder of scripts, not a package: put it on the path so `common` imports from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import headline, write_result

from vlm2rec.config import EvalConfig
from vlm2rec.evaluate import _validate, rank_targets

__all__ = [
    "METHODS",
    "PROBES",
    "Problem",
    "floor_topk",
    "gemm_only",
    "main",
    "make_problem",
    "run_method",
]

ROOT = Path(__file__).resolve().parent.parent
METHODS: tuple[str, ...] = ("ours", "floor", "gemm")
#: memory probe, run once per size: only the input validation that ``rank_targets`` starts with
PROBES: tuple[str, ...] = ("validation",)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Problem(NamedTuple):
    """One seeded evaluation problem (shapes as ``evaluate.rank_targets``)."""

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


def floor_topk(
    queries: Tensor, items: Tensor, k: int, user_batch_size: int, item_chunk: int
) -> Tensor:
    r"""Top-``k`` candidate ids per user by :math:`s_{uj} = q_u^\top v_j`, no masking: the floor.

    Blocked like ``rank_targets`` (``user_batch_size x item_chunk`` scores at a time): a top-``k``
    per chunk, merged with the running best, so memory is :math:`O(B \cdot C)`.

    Shapes: ``queries [U, D]``, ``items [N + 1, D]`` (row 0 padding, never returned); returns
    ``[U, min(k, N)]`` int64 item ids in ``1..N``, best first.
    """
    cand = items[1:]  # [N, D]: candidate index j is item id j + 1
    k = min(k, cand.shape[0])
    dev = queries.device
    out = torch.empty(queries.shape[0], k, dtype=torch.long, device=dev)
    for b0 in range(0, queries.shape[0], user_batch_size):
        q = queries[b0 : b0 + user_batch_size]  # [B, D]
        best_s = torch.empty(q.shape[0], 0, dtype=q.dtype, device=dev)
        best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=dev)
        for start in range(0, cand.shape[0], item_chunk):
            scores = q @ cand[start : start + item_chunk].T  # [B, C]
            s, i = scores.topk(min(k, scores.shape[1]), dim=1)  # [B, k]
            merged_s = torch.cat([best_s, s], dim=1)  # [B, <= 2k]
            merged_i = torch.cat([best_i, i + start], dim=1)
            best_s, pos = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, pos)
        out[b0 : b0 + q.shape[0]] = best_i + 1
    return out


def gemm_only(queries: Tensor, items: Tensor, user_batch_size: int, item_chunk: int) -> float:
    r"""The blocked products :math:`Q_b V_c^\top` alone, nothing read from them: a lower bound of
    any exact full ranking. Returns the sum of the last block (so the work cannot be skipped).

    Shapes: ``queries [U, D]``, ``items [N + 1, D]`` (row 0 padding, skipped).
    """
    cand = items[1:]  # [N, D]
    last = torch.zeros(())
    for b0 in range(0, queries.shape[0], user_batch_size):
        q = queries[b0 : b0 + user_batch_size]  # [B, D]
        for start in range(0, cand.shape[0], item_chunk):
            last = (q @ cand[start : start + item_chunk].T)[0, 0]  # [B, C] -> one entry
    return float(last)


def run_method(method: str, p: Problem, k: int, user_batch_size: int, item_chunk: int) -> Tensor:
    """Run ``ours`` (``[U, 2]``: each target's first rank and its ties), ``floor`` (top-k ids
    ``[U, k]``), ``gemm`` (products only; returns one number) or the ``validation`` probe (returns
    the targets) on ``p``."""
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
    if method == "floor":
        return floor_topk(p.queries, p.items, k, user_batch_size, item_chunk)
    if method == "gemm":
        return torch.tensor([gemm_only(p.queries, p.items, user_batch_size, item_chunk)])
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


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measured call in this (fresh) process: times and peak extra resident memory."""
    torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    cuda = dev.type == "cuda"
    p = _to(make_problem(args.items[0], args.users, args.dim, args.history, args.seed), dev, dtype)
    warm = make_problem(512, 64, args.dim, 4, args.seed + 1)  # first-call costs (BLAS init)
    run_method(
        args.method, _to(warm, dev, dtype), args.k, args.user_batch_size, min(args.item_chunk, 256)
    )
    cuda_before = 0
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        cuda_before = torch.cuda.memory_allocated(dev)
    before = _rss_bytes()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run_method(args.method, p, args.k, args.user_batch_size, args.item_chunk)
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
    return out


def _spawn(args: argparse.Namespace, n_items: int, method: str) -> dict[str, Any]:
    """Run one measurement in a subprocess and return its JSON record."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--method", method]
    cmd += ["--items", str(n_items), "--users", str(args.users), "--dim", str(args.dim)]
    cmd += ["--history", str(args.history), "--k", str(args.k), "--seed", str(args.seed)]
    cmd += ["--user-batch-size", str(args.user_batch_size), "--item-chunk", str(args.item_chunk)]
    cmd += ["--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"eval worker {method} N={n_items} failed:\n{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _measure_size(args: argparse.Namespace, n_items: int, reps: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for r in range(reps):
        for method in METHODS if r % 2 == 0 else METHODS[::-1]:  # alternate the order
            runs[method].append(_spawn(args, n_items, method))
            print(f"  N={n_items} rep {r + 1}/{reps} {method}: {runs[method][-1]}", flush=True)
    med = {
        m: {key: statistics.median(x[key] for x in rs) for key in rs[0]} for m, rs in runs.items()
    }
    probe = _spawn(args, n_items, "validation")
    print(f"  N={n_items} validation probe: {probe}", flush=True)
    b, c = args.user_batch_size, args.item_chunk
    size = DTYPES[args.dtype].itemsize  # bytes per score
    return {
        "items": n_items,
        "users": args.users,
        "reps": reps,
        "median": med,
        "runs": runs,
        "validation_probe": probe,
        "cpu_ratio": med["ours"]["cpu_s"] / med["floor"]["cpu_s"],
        "cpu_ratio_vs_gemm": med["ours"]["cpu_s"] / med["gemm"]["cpu_s"],
        "wall_ratio": med["ours"]["wall_s"] / med["floor"]["wall_s"],
        "theory_block_bytes": {"ours": size * b * (min(c, n_items) + b), "floor": size * b * c},
        "theory_unblocked_bytes": size * args.users * n_items,
    }


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        f"{'items':>9}{'users':>7}{'ours cpu s':>12}{'floor cpu s':>13}{'gemm cpu s':>12}"
        f"{'ours/floor':>12}{'ours/gemm':>11}"
        f"{'wall ratio':>12}{'ours dRSS MB':>14}{'of it checks':>14}{'floor dRSS MB':>15}"
        f"{'block MB':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        o, f = r["median"]["ours"], r["median"]["floor"]
        lines.append(
            f"{r['items']:>9}{r['users']:>7}{o['cpu_s']:>12.2f}{f['cpu_s']:>13.2f}"
            f"{r['median']['gemm']['cpu_s']:>12.2f}{r['cpu_ratio']:>12.3f}"
            f"{r['cpu_ratio_vs_gemm']:>11.3f}{r['wall_ratio']:>12.3f}"
            f"{o['peak_extra_rss_bytes'] / 2**20:>14.1f}"
            f"{r['validation_probe']['peak_extra_rss_bytes'] / 2**20:>14.1f}"
            f"{f['peak_extra_rss_bytes'] / 2**20:>15.1f}{r['theory_block_bytes']['ours'] / 2**20:>10.1f}"
        )
    return lines


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ev = EvalConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--history", type=int, default=50, help="masked seen items per user")
    p.add_argument("--k", type=int, default=20, help="floor's top-k (the largest metric cutoff)")
    p.add_argument("--user-batch-size", type=int, default=ev.user_batch_size)
    p.add_argument("--item-chunk", type=int, default=ev.item_chunk)
    p.add_argument("--reps", type=int, default=3, help="repetitions per method (medians)")
    p.add_argument("--largest-reps", type=int, default=1, help="repetitions at the largest size")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="embedding dtype")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS + PROBES, default="ours", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.items) < 1 or min(args.users, args.dim, args.k, args.reps, args.threads) < 1:
        p.error("--items, --users, --dim, --k, --reps, --threads must be >= 1")
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
    name = f"rank_targets / floor {'CPU' if clock == 'cpu' else 'wall'} time"
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
