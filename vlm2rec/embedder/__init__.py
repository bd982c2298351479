"""VLM item and sequence embedders (METHOD.md §2): the protocol, the backends and the factory.

``build_embedder(cfg, catalogue, seed=...)`` picks the backend from ``embedder.name``: a ``tiny-*``
offline model, or a hub id / local folder loaded with ``from_pretrained`` and dispatched on its
``model_type`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL -> decoder embedder; CLIP, SigLIP -> dual encoder),
and checks ``embedder.fusion`` against that backend. ``encode_catalogue`` embeds every item once
per evaluation.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, cast

import torch

from vlm2rec.config import EmbedderConfig
from vlm2rec.data.catalogue import Catalogue
from vlm2rec.embedder.base import FUSIONS, VIEWS, Embedder, View, resolve_dtype
from vlm2rec.embedder.decoder import DecoderEmbedder
from vlm2rec.embedder.dual import DualEmbedder
from vlm2rec.embedder.hub import EmbedderLoadError, load_pretrained
from vlm2rec.embedder.tiny import TINY_MODELS, build_tiny

__all__ = [
    "FUSIONS",
    "TINY_MODELS",
    "VIEWS",
    "DecoderEmbedder",
    "DualEmbedder",
    "Embedder",
    "EmbedderLoadError",
    "View",
    "build_embedder",
    "encode_catalogue",
]


def build_embedder(
    cfg: EmbedderConfig,
    catalogue: Catalogue,
    *,
    seed: int,
    device: torch.device | str = "cpu",
) -> Embedder:
    """The embedder named by ``cfg.name``, on ``device``, in train mode.

    Tiny models are deterministic from ``seed`` (weights and LoRA initialisation); for real
    checkpoints ``seed`` fixes the LoRA initialisation. A name that cannot be loaded raises
    :class:`EmbedderLoadError` explaining that offline hubs need a local folder.
    """
    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    folder: str | None = None
    if cfg.name in TINY_MODELS:
        backbone = build_tiny(cfg.name, seed=seed, image_side=cfg.image_size)
        cast(Any, backbone.model).to(dtype)  # transformers' decorated .to confuses mypy
    else:
        backbone = load_pretrained(cfg.name, dtype=dtype)
        folder = cfg.name if Path(cfg.name).is_dir() else None
    embedder: Embedder
    if backbone.family == "decoder":
        embedder = DecoderEmbedder(backbone, cfg, catalogue, seed=seed)
    else:
        embedder = DualEmbedder(backbone, cfg, catalogue, seed=seed, folder=folder)
    return embedder.to(device).train()


@torch.no_grad()
def encode_catalogue(embedder: Embedder, view: View, batch_size: int) -> torch.Tensor:
    """All item embeddings of one view: float32 ``[num_items + 1, D]`` on the embedder's device,
    row 0 (padding) zero, rows of items that cannot form the view zero.

    Runs in eval mode (the previous mode is restored afterwards) and under bf16 autocast on CUDA.
    """
    if batch_size < 1:
        raise ValueError(f"encode_catalogue: batch_size must be >= 1, got {batch_size}")
    was_training = embedder.training
    device = embedder.device
    n = embedder.catalogue.num_items
    out = torch.zeros(n + 1, embedder.dim, device=device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    embedder.eval()
    try:
        with autocast:
            for start in range(1, n + 1, batch_size):
                ids = torch.arange(start, min(start + batch_size, n + 1), device=device)
                out[start : start + len(ids)] = embedder.encode_items(ids, view).float()
    finally:
        embedder.train(was_training)
    return out
