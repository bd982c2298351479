r"""Dual-encoder embedder (CLIP, SigLIP): two towers, one fused view.

Reading of [paper] §2 for the cheaper family. ``text`` view = normalised text-tower output of the
item text (title, then text); ``image`` view = normalised image-tower output (a zero row for an
item without image); ``both`` = fusion of the two (``embedder.fusion``: variants ``mean``, which
``auto`` means here, and ``concat_proj``, see :mod:`vlm2rec.embedder.pooling`), where a missing
image enters as zero so the result is the text-only input.

Sequences: the text tower over the history lines (oldest first, tail kept within the token
budget), the image tower's normalised outputs averaged over the ``images_per_history`` most recent
history items that have an image, fused the same way:

.. math:: u = \mathrm{fuse}\big(t(\mathrm{history}),\ \tfrac{1}{|K|}\textstyle\sum_{k \in K} \hat\imath_k,\
          [K \neq \emptyset]\big)

A history without images (or all padding) has only the text part; all padding encodes the empty
text. Text follows each family's pretrained convention: CLIP pads to the longest text with an
attention mask and pools at the end-of-text token; SigLIP pads to a fixed length without mask and
pools the last position, as it was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlm2rec.config import EmbedderConfig
from vlm2rec.data.catalogue import Catalogue
from vlm2rec.embedder.base import Embedder, View, resolve_fusion
from vlm2rec.embedder.hub import save_backbone
from vlm2rec.embedder.image_cache import ImageCache
from vlm2rec.embedder.lora import configure_finetuning, merged_copy, unwrap
from vlm2rec.embedder.pooling import fuse_concat_proj, fuse_mean, l2_normalise, masked_mean
from vlm2rec.embedder.prompts import TextClipper, item_text
from vlm2rec.embedder.tiny import Backbone

__all__ = ["FUSION_FILE", "DualEmbedder"]

FUSION_FILE = "fusion.safetensors"  # the concat_proj head next to a saved checkpoint


def _pooled(out: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor in older transformers and an output object in newer ones."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _fusion_head(dim: int) -> torch.nn.Linear:
    """``concat_proj`` head initialised to ``W = [I I]/2, b = 0``: it starts as the ``mean`` fusion."""
    head = torch.nn.Linear(2 * dim, dim)
    with torch.no_grad():
        head.weight.copy_(torch.cat([torch.eye(dim), torch.eye(dim)], dim=1) / 2)
        head.bias.zero_()
    return head


class DualEmbedder(Embedder):
    """CLIP/SigLIP item and sequence embedder.

    Args:
        backbone: model, tokenizer and image processor; ``family`` is ``clip`` or ``siglip``.
        cfg: ``embedder`` section of the run config.
        catalogue: the items.
        seed: seed of the LoRA initialisation.
        folder: the checkpoint folder it was loaded from (to find a saved ``concat_proj`` head).
    """

    def __init__(
        self,
        backbone: Backbone,
        cfg: EmbedderConfig,
        catalogue: Catalogue,
        *,
        seed: int,
        folder: str | None = None,
    ) -> None:
        super().__init__()
        mode = resolve_fusion(cfg.fusion, "dual", cfg.name)  # a decoder's value fails here, first
        self.cfg, self.catalogue, self.family = cfg, catalogue, backbone.family
        if cfg.gradient_checkpointing:
            backbone.model.gradient_checkpointing_enable({"use_reentrant": False})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.backbone = configure_finetuning(
                backbone.model,
                mode=cfg.finetune,
                text_prefix="text_model.",
                vision_prefixes=("vision_model.", "visual_projection."),
                unused_prefixes=("logit_scale", "logit_bias"),
                target_modules=cfg.lora_target_modules,
                rank=cfg.lora_rank,
                alpha=cfg.lora_alpha,
                dropout=cfg.lora_dropout,
                freeze_vision=cfg.freeze_vision,
            )
        self.tokenizer, self.image_processor = backbone.tokenizer, backbone.image_processor
        config = unwrap(self.backbone).config
        text_cfg = config.text_config
        self.dim = int(
            getattr(config, "projection_dim", None)
            or text_cfg.projection_size
            or text_cfg.hidden_size
        )
        self.max_length = min(cfg.max_text_tokens, int(text_cfg.max_position_embeddings))
        budget = self.max_length - self.tokenizer.num_special_tokens_to_add()
        self.texts = TextClipper(catalogue, self.tokenizer, budget)
        self.images = ImageCache(
            catalogue.images, self.image_processor, self._resize_kwargs(config)
        )
        self.fusion = _fusion_head(self.dim) if mode == "concat_proj" else None
        if self.fusion is not None and folder is not None and (Path(folder) / FUSION_FILE).exists():
            self.fusion.load_state_dict(load_file(str(Path(folder) / FUSION_FILE)))

    def _resize_kwargs(self, config: Any) -> dict[str, Any]:
        """A non-native ``embedder.image_size`` resizes inputs and interpolates position embeddings."""
        side, native = self.cfg.image_size, int(config.vision_config.image_size)
        self._interpolate = bool(side) and side != native
        if not self._interpolate:
            return {}
        if self.family == "clip":
            return {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}}
        return {"size": {"height": side, "width": side}}

    # ---- towers -----------------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Text tower: ``N`` strings -> float32 ``[N, D]`` (not normalised)."""
        siglip = self.family == "siglip"
        batch = self.tokenizer(
            texts,
            padding="max_length" if siglip else True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        kwargs = {"input_ids": batch["input_ids"].to(self.device)}
        if not siglip:
            kwargs["attention_mask"] = batch["attention_mask"].to(self.device)
        model: Any = unwrap(self.backbone)
        return _pooled(model.get_text_features(**kwargs)).float()

    def encode_images(self, item_ids: list[int]) -> torch.Tensor:
        """Image tower over items that have images -> float32 ``[N, D]`` (not normalised)."""
        model: Any = unwrap(self.backbone)
        pixels = torch.stack([self.images.get(i)["pixel_values"] for i in item_ids])  # [N, 3, H, W]
        pixels = pixels.to(self.device, next(model.parameters()).dtype)
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        return _pooled(model.get_image_features(pixel_values=pixels, **kwargs)).float()

    def fuse(
        self, text: torch.Tensor, image: torch.Tensor, has_image: torch.Tensor
    ) -> torch.Tensor:
        """The ``both`` view from tower outputs (``embedder.fusion``)."""
        if self.fusion is None:
            return fuse_mean(text, image, has_image)
        return fuse_concat_proj(text, image, has_image, self.fusion.weight, self.fusion.bias)

    def _image_rows(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image outputs with zero rows for items without image, and the 0/1 mask."""
        has = torch.tensor([self.images.has_image(i) for i in ids], device=self.device)
        out = torch.zeros(len(ids), self.dim, device=self.device)
        rows = has.nonzero().flatten()
        if rows.numel():
            feats = l2_normalise(self.encode_images([ids[k] for k in rows.tolist()]))
            out = out.index_copy(0, rows, feats)
        return out, has

    # ---- protocol ---------------------------------------------------------------------------
    def encode_items(self, item_ids: torch.Tensor, view: View) -> torch.Tensor:
        """See :class:`Embedder`; the ``image`` view of an item without image is a zero row."""
        ids = self.check_item_ids(item_ids)
        if view == "image":
            return self._image_rows(ids)[0]
        text = l2_normalise(self.encode_text([item_text(*self.texts.fields(i)) for i in ids]))
        if view == "text":
            return text
        image, has = self._image_rows(ids)
        return self.fuse(text, image, has)

    def encode_sequences(self, histories: torch.Tensor) -> torch.Tensor:
        """See :class:`Embedder`; rows without history images are text only."""
        rows = self.check_histories(histories)
        text = self.encode_text([self.texts.history(r) for r in rows])
        k = self.cfg.images_per_history
        picked = [[i for i in (r[-k:] if k > 0 else []) if self.images.has_image(i)] for r in rows]
        width = max((len(p) for p in picked), default=0)
        image = torch.zeros(len(rows), self.dim, device=self.device)
        if width:
            flat = [i for p in picked for i in p]
            feats = l2_normalise(self.encode_images(flat))  # [sum K_b, D]
            slots = torch.zeros(len(rows), width, self.dim, device=self.device)  # [B, K, D]
            mask = torch.zeros(len(rows), width, device=self.device)  # [B, K]
            b_idx = torch.tensor([b for b, p in enumerate(picked) for _ in p], device=self.device)
            k_idx = torch.tensor([k for p in picked for k in range(len(p))], device=self.device)
            slots = slots.index_put((b_idx, k_idx), feats)
            mask[b_idx, k_idx] = 1.0
            image = masked_mean(slots, mask)
        has = torch.tensor([bool(p) for p in picked], device=self.device)
        return self.fuse(text, image, has)

    def save_pretrained(self, folder: str | Path) -> None:
        """Merged checkpoint + tokenizer + image processor, and the ``concat_proj`` head if any."""
        save_backbone(merged_copy(self.backbone), self.tokenizer, self.image_processor, folder)
        if self.fusion is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.fusion.state_dict().items()}
            save_file(state, str(Path(folder) / FUSION_FILE))
