"""``bench/step.py`` and ``bench/eval.py``: tiny runs write the result JSON; their helpers are right.

The benchmark scripts live in ``bench/`` (a folder of scripts, not a package); ``bench_scripts.load``
imports them from their files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from bench_scripts import load

from vlm2rec.config import RunConfig

step = load("step")
bench_eval = load("eval")

#: a tiny synthetic catalogue so that the step smoke run builds its data in a second
TINY_DATA = [
    "data.synthetic.users=40",
    "data.synthetic.items=32",
    "data.synthetic.shapes=4",
    "data.synthetic.brands=4",
    "data.synthetic.image_size=16",
]


def _check_result(path: Path, name: str) -> dict:
    doc = json.loads(path.read_text())
    assert doc["name"] == name
    head = doc["headline"]
    assert set(head) == {"name", "value", "unit"}
    assert math.isfinite(head["value"]) and head["value"] > 0
    assert head["unit"] == "x"
    assert doc["machine"]["cpu"] and doc["machine"]["cores"] >= 1
    assert "torch" in doc["machine"]
    return doc


@pytest.mark.slow
def test_step_smoke_writes_headline_and_machine(tmp_path: Path) -> None:
    argv = ["--models", "tiny-qwen2vl", "tiny-clip", "--batch-size", "8", "--reps", "1"]
    for text in TINY_DATA:
        argv += ["--set", text]
    out = step.main([*argv, "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "s.json")])
    doc = _check_result(out, "step")
    assert "tiny-qwen2vl" in doc["headline"]["name"]
    for model in ("tiny-qwen2vl", "tiny-clip"):
        rec = doc["results"][model]
        assert set(rec["variants"]) == set(step.VARIANTS)
        # plain_fused is the same objective as plain: same loss on the same weights and batch
        assert rec["plain_fused_loss_abs_diff"] < 1e-5
        v = rec["variants"]
        assert v["plain_fused"]["first_loss"] == pytest.approx(v["plain"]["first_loss"], abs=1e-5)
        assert v["vlm2rec"]["first_loss"] > v["plain"]["first_loss"]  # + alpha L^w + beta L_topo
        for rec_v in v.values():
            assert rec_v["step_cpu_ms_median"] > 0 and len(rec_v["step_wall_cpu_ms"]) == 1
        assert v["plain"]["step_cpu_ratio_vs_plain"] == 1.0
        paired = rec["paired_cpu_ratios"]
        assert set(paired) == {"vlm2rec/plain", "vlm2rec/plain_fused", "plain_fused/plain"}
        assert all(0 < q1 <= med <= q3 for q1, med, q3 in paired.values())


def test_quartiles() -> None:
    assert step._quartiles([2.0]) == [2.0, 2.0, 2.0]
    assert step._quartiles([4.0, 1.0, 3.0, 2.0, 5.0]) == [2.0, 3.0, 4.0]


@pytest.mark.slow
def test_eval_smoke_writes_headline_and_machine(tmp_path: Path) -> None:
    # one size: each (method, repetition) is a subprocess that imports torch, a few seconds each
    argv = ["--items", "300", "--users", "40", "--history", "5", "--reps", "1"]
    out = bench_eval.main([*argv, "--cpu-tile", "16x128", "--out", str(tmp_path / "e.json")])
    doc = _check_result(out, "eval")
    rows = doc["results"]
    assert [r["items"] for r in rows] == [300]
    assert "300 items x 40 users" in doc["headline"]["name"]
    assert "GEMM" in doc["headline"]["name"]
    assert doc["headline"]["value"] == pytest.approx(rows[-1]["cpu_ratio"])
    assert doc["settings"]["cpu_tile"] == [16, 128]
    for r in rows:
        for method in bench_eval.METHODS:
            (run,) = r["runs"][method]
            assert run["cpu_s"] >= 0 and run["wall_s"] > 0
            assert 0 <= run["peak_extra_rss_bytes"] <= run["peak_rss_bytes"]
        assert r["theory_unblocked_bytes"] == 4 * 40 * r["items"]
        tile = r["theory_tile_bytes"]
        assert (tile["tile_users"], tile["tile_items"]) == (16, 128)
        assert tile["gemm"] == 4 * 16 * 128
        assert r["validation_probe"]["peak_extra_rss_bytes"] >= 0


@pytest.mark.parametrize("chunks_outer", [True, False])
def test_gemm_only_reads_the_last_block(chunks_outer: bool) -> None:
    p = bench_eval.make_problem(n_items=20, n_users=10, dim=4, history=2, seed=2)
    value = bench_eval.gemm_only(p.queries, p.items, 4, 7, chunks_outer=chunks_outer)
    # last user block starts at user 8, last item chunk at candidate 14 = item id 15
    assert value == pytest.approx(float(p.queries[8] @ p.items[15]), abs=1e-6)


def test_gemm_methods_use_ours_tiles_and_the_configured_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[int, int, bool]] = []

    def spy(
        queries: torch.Tensor,
        items: torch.Tensor,
        users: int,
        chunk: int,
        *,
        chunks_outer: bool = True,
    ) -> float:
        seen.append((users, chunk, chunks_outer))
        return 0.0

    monkeypatch.setattr(bench_eval, "gemm_only", spy)
    p = bench_eval.make_problem(n_items=20, n_users=10, dim=4, history=2, seed=2)
    bench_eval.run_method("gemm", p, 256, 8192)
    bench_eval.run_method("gemm_blocks", p, 256, 8192)
    tile = bench_eval.score_tile(p.queries.device, 256, 8192)
    assert seen == [(*tile, True), (256, 8192, False)]


def test_make_problem_is_seeded_and_valid() -> None:
    a = bench_eval.make_problem(n_items=40, n_users=7, dim=4, history=5, seed=3)
    b = bench_eval.make_problem(n_items=40, n_users=7, dim=4, history=5, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(a.items[0], torch.zeros(4))
    assert torch.allclose(a.items[1:].norm(dim=1), torch.ones(40))
    assert int(a.targets.min()) >= 1 and int(a.targets.max()) <= 40
    assert int(a.seen_items.min()) >= 1 and int(a.seen_items.max()) <= 40
    assert a.seen_indptr.tolist() == list(range(0, 36, 5))
    ranks = bench_eval.run_method("ours", a, 3, 8)  # accepted by rank_targets' validation
    assert ranks.shape == (7, 2) and int(ranks.min()) >= 0  # (first rank or 0 = miss, ties)


def test_validation_probe_runs_rank_targets_checks() -> None:
    p = bench_eval.make_problem(n_items=20, n_users=3, dim=4, history=2, seed=0)
    assert torch.equal(bench_eval.run_method("validation", p, 2, 8), p.targets)
    p.items[7, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        bench_eval.run_method("validation", p, 2, 8)
    with pytest.raises(ValueError, match="method"):
        bench_eval.run_method("nope", p, 2, 8)


def test_plain_fused_loss_is_plain_loss() -> None:
    cfg = RunConfig()
    g = torch.Generator().manual_seed(0)
    u, both, text, image = (torch.randn(9, 6, generator=g) for _ in range(4))
    ids = torch.tensor([1, 2, 3, 3, 4, 5, 6, 7, 1])  # repeated items exercise the duplicate mask
    views = {"both": both, "text": text, "image": image}
    plain = step.loss_fn(cfg, "plain")(u, views, ids)
    fused = step.loss_fn(cfg, "plain_fused")(u, {"both": both}, ids)
    full = step.loss_fn(cfg, "vlm2rec")(u, views, ids)
    assert torch.equal(plain, fused)
    assert float(full) > float(plain)  # alpha * L^w + beta * L_topo are positive here


def test_rotated_orders_visit_each_variant_once_per_round() -> None:
    names = list(step.VARIANTS)
    orders = [step._rotated(names, r) for r in range(len(names))]
    assert all(sorted(o) == sorted(names) for o in orders)
    assert len({o[0] for o in orders}) == len(names)  # each variant leads one round
