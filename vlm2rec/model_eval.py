"""Score an embedder on a split: catalogue pass, sequence pass, full ranking, diagnostics.

Work is sharded over data-parallel ranks (each rank embeds a slice of the catalogue and ranks a
slice of the users; slices are gathered), so every rank returns the same metric dict. The maths
lives in ``ranking``, ``metrics`` and ``diagnostics``; this module only moves tensors.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlm2rec.config import EvalConfig
from vlm2rec.data.splits import EvalExamples
from vlm2rec.diagnostics import embedding_diagnostics
from vlm2rec.distributed import DistInfo, all_gather_no_grad
from vlm2rec.ranking import TargetRanks, rank_sampled, rank_targets, sampled_metrics, view_metrics

if TYPE_CHECKING:  # annotations only: importing the embedders costs transformers (seconds)
    from vlm2rec.embedder import Embedder

__all__ = ["autocast", "embed_catalogue", "evaluate_model", "fixed_negatives"]


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA, nothing on CPU (CPU bf16 is slower than fp32 for these sizes)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _gather_rows(local: torch.Tensor, total: int, dist: DistInfo) -> torch.Tensor:
    """Concatenate equal-sized per-rank slices [n, ...] and trim the padding to ``total`` rows."""
    if not dist.is_distributed:
        return local[:total]
    return all_gather_no_grad(local)[:total]


def _shard(n: int, dist: DistInfo) -> torch.Tensor:
    """Indices of this rank's contiguous slice of range(n), padded (with 0) to ceil(n / W)."""
    per = -(-n // dist.world_size)
    idx = torch.arange(dist.rank * per, (dist.rank + 1) * per)
    return torch.where(idx < n, idx, torch.zeros_like(idx))


@torch.no_grad()
def embed_catalogue(
    embedder: Embedder, view: str, batch_size: int, dist: DistInfo, device: torch.device
) -> torch.Tensor:
    """Item embeddings of one view, ``[num_items + 1, D]`` float32, row 0 = zeros (padding)."""
    n = embedder.catalogue.num_items
    ids = _shard(n, dist) + 1  # item ids are 1..n
    parts = []
    with autocast(device):
        for chunk in ids.split(batch_size):
            parts.append(embedder.encode_items(chunk.to(device), view).float())  # type: ignore[arg-type]
    local = torch.cat(parts)
    items = _gather_rows(local, n, dist)
    return torch.cat([torch.zeros_like(items[:1]), items])


@torch.no_grad()
def _embed_sequences(
    embedder: Embedder, histories: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    parts = []
    with autocast(device):
        for chunk in histories.split(batch_size):
            parts.append(embedder.encode_sequences(chunk.to(device)).float())
    return torch.cat(parts)


def _local_csr(
    indptr: torch.Tensor, items: torch.Tensor, users: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR ``(indptr, items)`` restricted to the rows ``users`` (this rank's slice)."""
    lo, hi = indptr[users], indptr[users + 1]
    local_indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(hi - lo, 0)])
    local = [items[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
    return local_indptr, torch.cat(local or [items[:0]])


def fixed_negatives(
    examples: EvalExamples, split: str, cfg: EvalConfig, n_items: int, fingerprint: str
) -> np.ndarray | None:
    """``[U, eval.sampled_negatives]`` negatives of the sampled protocol (``None`` when it is off),
    seeded by the dataset's fingerprint and the split: the same in every trial and rerun."""
    if cfg.sampled_negatives == 0:
        return None
    seq = np.random.SeedSequence([int(fingerprint[:16], 16), ("val", "test").index(split)])
    seed = int(seq.generate_state(1)[0])
    return examples.sample_negatives(cfg.sampled_negatives, n_items, cfg.exclude_seen, seed)


def evaluate_model(
    embedder: Embedder,
    examples: EvalExamples,
    split: str,
    cfg: EvalConfig,
    dist: DistInfo,
    negatives: np.ndarray | None = None,
) -> dict[str, float]:
    """All ``{split}/*`` evaluation metrics (docs/METHOD.md §7) for the views in ``cfg.views``,
    under ``cfg.exclude_seen`` and ``cfg.ties``, plus ``{split}/repeat_rate``; with ``negatives``
    (:func:`fixed_negatives`) also the sampled protocol's ``{split}/sampled{N}/*`` (fused view)."""
    # The weights' device, not dist.device: a single process gets DistInfo() ("cpu") even when
    # fit()/the CLI placed the model on CUDA (train.device = auto), and autocast must follow it.
    device = embedder.device
    was_training = embedder.training
    embedder.eval()
    try:
        items = {
            v: embed_catalogue(embedder, v, cfg.item_batch_size, dist, device) for v in cfg.views
        }
        users = _shard(len(examples.targets), dist)
        histories = torch.as_tensor(examples.histories)[users]
        queries = _embed_sequences(embedder, histories, cfg.user_batch_size, device)
        indptr, excluded = (torch.as_tensor(a) for a in examples.excluded(cfg.exclude_seen))
        local_indptr, local_excluded = _local_csr(indptr, excluded, users)
        targets = torch.as_tensor(examples.targets)[users].to(device)
        ranks = {}
        for view, vectors in items.items():
            local = rank_targets(
                queries,
                vectors,
                targets,
                local_indptr.to(device),
                local_excluded.to(device),
                user_batch_size=cfg.user_batch_size,
                item_chunk=cfg.item_chunk,
            )
            n = len(examples.targets)
            ranks[view] = TargetRanks(*(_gather_rows(t, n, dist) for t in local))
        metrics = view_metrics(ranks, split, cfg.ties)
        metrics[f"{split}/repeat_rate"] = float(examples.repeats.mean())
        if negatives is not None:
            local = rank_sampled(
                queries, items["both"], targets, torch.as_tensor(negatives)[users].to(device)
            )
            both = TargetRanks(*(_gather_rows(t, n, dist) for t in local))
            metrics |= sampled_metrics(both, split, negatives.shape[1], cfg.ties)
        if {"text", "image"} <= items.keys():
            metrics.update(embedding_diagnostics(items, split))
        return metrics
    finally:
        embedder.train(was_training)
