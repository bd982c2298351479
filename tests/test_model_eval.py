"""evaluate_model: same numbers as evaluate_views on the same embeddings, sane keys and values,
and the rank sharding (slice + gather) checked with W simulated ranks in threads."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from typing import Any

import numpy as np
import pytest
import torch

import vlm2rec.model_eval as me
from vlm2rec.config import EvalConfig, RunConfig, SyntheticConfig, apply_overrides, to_dict
from vlm2rec.data.schema import PreparedDataset
from vlm2rec.distributed import DistInfo
from vlm2rec.embedder import build_embedder
from vlm2rec.ranking import evaluate_views
from vlm2rec.train import RunState, build_run

KS = (5, 10, 20)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(
    tiny_dataset: PreparedDataset,
    tiny_synthetic_config: SyntheticConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> RunState:
    """An untrained tiny-clip run on a copy of the shared fixture, with small eval blocks so that
    the catalogue pass, user blocks and item chunks all take several iterations."""
    data = tmp_path_factory.mktemp("model_eval") / "ds"
    shutil.copytree(tiny_dataset.path, data)
    cfg = apply_overrides(
        RunConfig(),
        {
            "data.path": str(data),
            "data.prepare_if_missing": False,
            "data.synthetic": to_dict(tiny_synthetic_config),
            "embedder.name": "tiny-clip",
            "embedder.item_prompt": "{image}{title} {text}",
            "embedder.sequence_prompt": "{images}{history}",
            "train.device": "cpu",
            "eval.item_batch_size": 7,
            "eval.user_batch_size": 9,
            "eval.item_chunk": 10,
        },
    )
    return build_run(cfg, DistInfo())


def _views_reference(run: RunState, split: str, ev: EvalConfig) -> dict[str, float]:
    """The same scoring assembled by hand from the public encoders and evaluate_views."""
    emb, examples = run.embedder, getattr(run.splits, split)
    emb.eval()
    try:
        with torch.no_grad():
            ids = torch.arange(1, emb.catalogue.num_items + 1)
            items = {
                v: torch.cat([torch.zeros(1, emb.dim), emb.encode_items(ids, v)])  # type: ignore[arg-type]
                for v in ev.views
            }
            hist = torch.as_tensor(examples.histories)
            queries = torch.cat([emb.encode_sequences(h) for h in hist.split(ev.user_batch_size)])
    finally:
        emb.train()
    got = evaluate_views(
        queries,
        items,
        examples.targets,
        *examples.excluded(ev.exclude_seen),
        split,
        ties=ev.ties,
        user_batch_size=ev.user_batch_size,
        item_chunk=ev.item_chunk,
    )
    return got | {f"{split}/repeat_rate": float(examples.repeats.mean())}


@pytest.mark.parametrize(
    ("split", "exclude", "ties"),
    [("val", "all", "expected"), ("test", "all", "expected"), ("val", "none", "pessimistic")],
)
def test_equals_evaluate_views(run: RunState, split: str, exclude: str, ties: str) -> None:
    ev = dataclasses.replace(run.cfg.eval, exclude_seen=exclude, ties=ties)
    got = me.evaluate_model(run.embedder, getattr(run.splits, split), split, ev, DistInfo())
    want = _views_reference(run, split, ev)
    assert got.keys() == want.keys()
    assert got == pytest.approx(want, abs=1e-9)


def test_keys_and_values_are_sane(run: RunState) -> None:
    assert run.embedder.training
    m = me.evaluate_model(run.embedder, run.splits.val, "val", run.cfg.eval, DistInfo())
    assert run.embedder.training  # train mode restored after the eval-mode pass
    for sfx in ("", "/text", "/image"):
        recalls = [m[f"val/recall@{k}{sfx}"] for k in KS]
        ndcgs = [m[f"val/ndcg@{k}{sfx}"] for k in KS]
        assert recalls == sorted(recalls) and ndcgs == sorted(ndcgs)
        assert all(0 <= n <= r <= 1 for n, r in zip(ndcgs, recalls, strict=True))
        assert 0 < m[f"val/mrr{sfx}"] <= recalls[0] + (1 - recalls[0]) / 6  # rank > 5 => rr <= 1/6
    assert recalls[-1] <= 1 and m["val/recall@20"] > 0
    for v in ("text", "image"):
        assert 0 <= m[f"val/anisotropy_{v}"] <= 1 + 1e-6
        assert 1 <= m[f"val/erank_{v}"] <= run.embedder.dim
    assert 0 <= m["val/modality_balance"] <= 1
    fused = m["val/ndcg@10"]
    assert m["val/reliance_text"] == pytest.approx(1 - m["val/ndcg@10/image"] / fused)
    assert m["val/reliance_image"] == pytest.approx(1 - m["val/ndcg@10/text"] / fused)


def test_sampled_protocol_is_reported_beside_full_ranking(run: RunState) -> None:
    ev = dataclasses.replace(run.cfg.eval, sampled_negatives=20)
    val = run.splits.val
    neg = me.fixed_negatives(val, "val", ev, run.catalogue.num_items, run.fingerprint)
    assert neg is not None and neg.shape == (len(val), 20)
    assert me.fixed_negatives(val, "val", run.cfg.eval, 32, run.fingerprint) is None  # off
    other = me.fixed_negatives(val, "test", ev, run.catalogue.num_items, run.fingerprint)
    assert other is not None and not np.array_equal(neg, other)  # one fixed draw per split
    full = me.evaluate_model(run.embedder, val, "val", ev, DistInfo())
    both = me.evaluate_model(run.embedder, val, "val", ev, DistInfo(), neg)
    sampled = {f"val/sampled20/{m}@{k}" for m in ("hit", "ndcg") for k in (10, 20)}
    assert set(both) == set(full) | sampled and {k: both[k] for k in full} == full
    # among a subset of the candidates a target can only move up
    assert both["val/sampled20/hit@10"] >= both["val/recall@10"]
    assert both["val/sampled20/ndcg@10"] >= both["val/ndcg@10"]


def test_fused_view_only_has_no_diagnostics(run: RunState) -> None:
    cfg = dataclasses.replace(run.cfg.eval, views=("both",))
    m = me.evaluate_model(run.embedder, run.splits.val, "val", cfg, DistInfo())
    ranking = {f"val/{n}@{k}" for n in ("recall", "ndcg") for k in KS}
    assert set(m) == ranking | {"val/mrr", "val/repeat_rate"}


def test_embed_catalogue_rows(run: RunState) -> None:
    n = run.catalogue.num_items
    emb = me.embed_catalogue(run.embedder, "both", 5, DistInfo(), torch.device("cpu"))
    assert emb.shape == (n + 1, run.embedder.dim) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.zeros(run.embedder.dim))  # padding row
    torch.testing.assert_close(emb[1:].norm(dim=1), torch.ones(n))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shard_slices_cover_range_in_rank_order(world: int) -> None:
    for n in range(1, 30):
        per = -(-n // world)
        shards = [me._shard(n, DistInfo(r, world)) for r in range(world)]
        assert all(len(s) == per for s in shards)  # equal sizes: gathers need equal rows
        flat = torch.cat(shards)
        assert torch.equal(flat[:n], torch.arange(n))  # concatenated in rank order, then trimmed
        assert bool((flat[n:] == 0).all())  # padding points at a valid row


class _ThreadGroup:
    """Stands in for a process group: ranks are threads; all_gather concatenates in rank order."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.local = threading.local()
        self.barrier = threading.Barrier(world, timeout=60)
        self.slots: dict[int, torch.Tensor] = {}

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        rank = self.local.rank
        self.barrier.wait()  # everyone has read the previous round
        self.slots[rank] = x.clone()
        self.barrier.wait()
        out = torch.cat([self.slots[r] for r in range(self.world)])
        self.barrier.wait()
        return out


def test_sharded_evaluation_matches_one_process(
    run: RunState, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batch sizes of 1 make every forward pass and score block shape-identical whatever the
    # shard, so the sharded result must equal the single-process one exactly. 3 ranks over 32
    # items and 25 users: both slices need padding, which the gather must trim.
    cfg = dataclasses.replace(
        run.cfg.eval, item_batch_size=1, user_batch_size=1, sampled_negatives=12
    )
    examples = run.splits.val.subsample(25, seed=1)
    negatives = me.fixed_negatives(examples, "val", cfg, run.catalogue.num_items, run.fingerprint)
    single = me.evaluate_model(run.embedder, examples, "val", cfg, DistInfo(), negatives)
    assert "val/sampled12/hit@10" in single
    world = 3
    group = _ThreadGroup(world)
    monkeypatch.setattr(me, "all_gather_no_grad", group.all_gather)
    results: dict[int, Any] = {}
    # One model per rank, as in real data parallelism; built here because seeding the global
    # RNG is not thread-safe.
    models = [
        build_embedder(run.cfg.embedder, run.catalogue, seed=run.cfg.seed) for _ in range(world)
    ]

    def rank_main(rank: int) -> None:
        group.local.rank = rank
        try:
            dist = DistInfo(rank, world)
            results[rank] = me.evaluate_model(models[rank], examples, "val", cfg, dist, negatives)
        except BaseException as exc:  # reported by the main thread
            group.barrier.abort()
            results[rank] = exc

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rank in range(world):
        assert not isinstance(results[rank], BaseException), results[rank]
        assert results[rank] == single, f"rank {rank}"
    assert len(examples) == 25 and np.isfinite(list(single.values())).all()
