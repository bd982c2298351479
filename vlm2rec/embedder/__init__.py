"""VLM item and sequence embedders (METHOD.md §2): the protocol, the backends and the factory.

``build_embedder(cfg, catalogue, seed=...)`` picks the backend from ``embedder.name``: a ``tiny-*``
offline model, or a hub id / local folder loaded with ``from_pretrained`` and dispatched on its
``model_type`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL -> decoder embedder; CLIP, SigLIP -> dual encoder),
and checks ``embedder.fusion`` against that backend.
"""

from __future__ import annotations

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
