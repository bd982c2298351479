r"""Decoder-VLM embedder (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): prompt in, last token's hidden state out.

Reading of [paper] §2 in the VLM2Vec convention. An item view is one prompt from
``embedder.item_prompt`` (``{image}``, ``{title}``, ``{text}``); a history is one prompt from
``embedder.sequence_prompt`` (``{images}`` = the images of the ``images_per_history`` most recent
history items that have one, oldest first; ``{history}`` = one line per item, oldest first).

.. math:: e = \frac{h_{last}}{\lVert h_{last} \rVert_2}, \quad
          h_{last} = \mathrm{LM}(\mathrm{prompt})_{t_{last}}

The three families run through the same code; what differs (the vision tower's output, Qwen3-VL's
deepstack features) is a :class:`~vlm2rec.embedder.families.DecoderFamily` picked from the
checkpoint's ``model_type``. Inputs are assembled exactly as the family's processor would (one
``<|image_pad|>`` per merged patch: ``t*h*w / merge_size**2`` of them, ``image_grid_thw``,
``mm_token_type_ids``; a test compares them per family) but from per-item cached image tensors, so
images are preprocessed once per item, not per step. Positions are the model's multimodal RoPE
indices computed *with the attention mask*, so a prompt's embedding does not depend on how much
left padding its batch needs.

View rules: ``text`` = prompt without image; ``image`` = prompt with the image and empty title and
text (a zero row for an item without image); ``both`` depends on ``embedder.fusion``:

* ``joint`` (``auto``): one prompt with everything the item has (image and text);
* ``external``: the ``text`` and ``image`` views, each encoded alone, summed and renormalised,

  .. math:: v^M = \frac{v^T + v^I}{\lVert v^T + v^I \rVert_2}

  (``v^I = 0`` for an item without image, so ``v^M = v^T``), the setting a secondary summary of the
  paper reports (docs/METHOD.md §2). The three views then cost two forward passes, not three
  (:meth:`DecoderEmbedder.encode_views`). Histories likewise: the text-only history prompt (no
  images) and the image-only one (the images, an empty ``{history}``), :math:`u = (u^T + u^I) /
  \lVert u^T + u^I \rVert_2`, with :math:`u^I = 0` for a history without images.

An all-padding history is the sequence prompt with no images and an empty history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlm2rec.config import EmbedderConfig
from vlm2rec.data.catalogue import Catalogue
from vlm2rec.embedder.base import VIEWS, Embedder, View, resolve_fusion
from vlm2rec.embedder.families import DECODER_FAMILIES, DecoderFamily, VisionFeatures
from vlm2rec.embedder.hub import save_backbone
from vlm2rec.embedder.image_cache import ImageCache
from vlm2rec.embedder.lora import configure_finetuning, merged_copy, unwrap
from vlm2rec.embedder.pooling import fuse_mean, l2_normalise, last_token_pool
from vlm2rec.embedder.prompts import TextClipper, check_template
from vlm2rec.embedder.tiny import Backbone

__all__ = ["FEATURE_BLOCK", "DecoderEmbedder"]

#: item ids per vision pass when filling the frozen-feature cache (ids ``k*B .. k*B+B-1``)
FEATURE_BLOCK = 32


def _pixel_budget(processor: Any, max_pixels: int) -> dict[str, Any]:
    """Processor kwargs capping the pixels per image at ``embedder.max_pixels`` (0 = default)."""
    if max_pixels <= 0:
        return {}
    shortest = int(processor.size["shortest_edge"])
    return {"size": {"shortest_edge": min(shortest, max_pixels), "longest_edge": max_pixels}}


def _family(model: Any) -> DecoderFamily:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in DECODER_FAMILIES:
        raise ValueError(
            f"DecoderEmbedder: model_type {model_type!r} is not a decoder family "
            f"({', '.join(DECODER_FAMILIES)})"
        )
    return DECODER_FAMILIES[model_type]


class DecoderEmbedder(Embedder):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL item and sequence embedder: last-token pooling, left
    padding, ``joint`` or ``external`` fusion.

    Args:
        backbone: model, tokenizer and image processor (tiny or ``from_pretrained``).
        cfg: ``embedder`` section of the run config.
        catalogue: the items.
        seed: seed of the LoRA initialisation.

    Attributes:
        family: what differs between the model families (:mod:`vlm2rec.embedder.families`).
        fusion: ``joint`` or ``external`` (``embedder.fusion`` with ``auto`` resolved).
    """

    def __init__(
        self, backbone: Backbone, cfg: EmbedderConfig, catalogue: Catalogue, *, seed: int
    ) -> None:
        super().__init__()
        check_template(cfg.item_prompt, ("image", "title", "text"), "embedder.item_prompt")
        check_template(cfg.sequence_prompt, ("images", "history"), "embedder.sequence_prompt")
        self.fusion = resolve_fusion(cfg.fusion, "decoder", cfg.name)
        self.family = _family(backbone.model)
        self.cfg, self.catalogue = cfg, catalogue
        if cfg.gradient_checkpointing:
            backbone.model.gradient_checkpointing_enable({"use_reentrant": False})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.backbone = configure_finetuning(
                backbone.model,
                mode=cfg.finetune,
                text_prefix="model.language_model.",
                vision_prefixes=("model.visual.",),
                unused_prefixes=("lm_head.",),
                target_modules=cfg.lora_target_modules,
                rank=cfg.lora_rank,
                alpha=cfg.lora_alpha,
                dropout=cfg.lora_dropout,
                freeze_vision=cfg.freeze_vision,
            )
        self.tokenizer = backbone.tokenizer
        self.image_processor = backbone.image_processor
        config = unwrap(self.backbone).config
        self.dim = int(config.text_config.hidden_size)
        self.image_token_id = int(config.image_token_id)
        self._image_token = self._token(self.image_token_id)
        self._vision_start = self._token(int(config.vision_start_token_id))
        self._vision_end = self._token(int(config.vision_end_token_id))
        self._merge = int(self.image_processor.merge_size)
        self.images = ImageCache(
            catalogue.images,
            self.image_processor,
            _pixel_budget(self.image_processor, cfg.max_pixels),
        )
        self.texts = TextClipper(catalogue, self.tokenizer, cfg.max_text_tokens)
        # A frozen vision tower is a fixed function of the image (the three families' ViTs have no
        # dropout): its outputs are computed once per item and reused by every prompt.
        visual = unwrap(self.backbone).model.visual
        self.vision_frozen = not any(p.requires_grad for p in visual.parameters())
        self._features: dict[int, VisionFeatures] = {}

    # ---- prompt assembly -------------------------------------------------------------------
    def _token(self, token_id: int) -> str:
        """The string of a special token (placeholders are written as text, then tokenised)."""
        return str(self.tokenizer.convert_ids_to_tokens(token_id))

    def image_placeholder(self, item_id: int) -> str:
        """``<|vision_start|>`` + one ``<|image_pad|>`` per merged patch + ``<|vision_end|>``."""
        grid = self.images.get(item_id)["image_grid_thw"]
        n_tokens = int(grid.prod()) // self._merge**2
        return self._vision_start + self._image_token * n_tokens + self._vision_end

    def item_prompt(self, item_id: int, view: View) -> tuple[str, list[int]]:
        """The prompt of one item view and the ids of the items whose images it holds."""
        with_image = view != "text" and self.images.has_image(item_id)
        title, text = ("", "") if view == "image" else self.texts.fields(item_id)
        image = self.image_placeholder(item_id) if with_image else ""
        prompt = self.cfg.item_prompt.format(image=image, title=title, text=text)
        return prompt, [item_id] if with_image else []

    def history_images(self, history: list[int]) -> list[int]:
        """The ``images_per_history`` most recent items of a history that have an image, oldest first."""
        k = self.cfg.images_per_history
        recent = history[-k:] if k > 0 else []
        return [i for i in recent if self.images.has_image(i)]

    def sequence_prompt(self, history: list[int], view: View = "both") -> tuple[str, list[int]]:
        """The prompt of one history (real ids, oldest first) and its image item ids.

        ``view``: ``both`` (images and history text), ``text`` (no images) or ``image`` (the images,
        an empty ``{history}``), the parts of external fusion."""
        with_image = self.history_images(history) if view != "text" else []
        images = "".join(self.image_placeholder(i) for i in with_image)
        lines = self.texts.history(history) if view != "image" else ""
        prompt = self.cfg.sequence_prompt.format(images=images, history=lines)
        return prompt, with_image

    def model_inputs(
        self, prompts: list[str], image_ids: list[int], padding_side: str = "left"
    ) -> dict[str, torch.Tensor]:
        """Tokenised, padded prompts plus the cached pixels of ``image_ids`` (in prompt order):
        the same keys and values the family's processor (``Qwen2VLProcessor``,
        ``Qwen2_5_VLProcessor``, ``Qwen3VLProcessor``) produces for these prompts and images."""
        batch = self.tokenizer(
            prompts,
            padding=True,
            padding_side=padding_side,
            return_tensors="pt",
            add_special_tokens=False,
        )
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        # 1 marks image placeholder tokens: what M-RoPE uses to lay out the 3-D positions
        inputs["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).long()
        if image_ids:
            cached = [self.images.get(i) for i in image_ids]
            inputs["pixel_values"] = torch.cat([c["pixel_values"] for c in cached])  # [sum P, d]
            inputs["image_grid_thw"] = torch.stack([c["image_grid_thw"] for c in cached])  # [I, 3]
        return inputs

    # ---- forward ---------------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, image_ids: list[int]) -> list[VisionFeatures]:
        """Frozen vision tower outputs per image, computed once per item: ``(merged, *deepstack)``,
        each ``[tokens_i, D]`` (Qwen3-VL adds one tensor per deepstack level).

        The cache is filled one fixed block of :data:`FEATURE_BLOCK` item ids at a time (the
        block's items with an image, in one vision pass), never with whatever items the first
        batch to need them holds: a batched pass rounds differently per batch composition
        (~1e-8), so batch-filled values would depend on the order a run meets the items in, and a
        resumed run or a fresh ``evaluate`` would not reproduce the uninterrupted one bit for bit.
        """
        blocks = sorted({i // FEATURE_BLOCK for i in image_ids if i not in self._features})
        core = unwrap(self.backbone).model
        for block in blocks:
            first = max(1, block * FEATURE_BLOCK)
            last = min((block + 1) * FEATURE_BLOCK, self.catalogue.num_items + 1)
            ids = [i for i in range(first, last) if self.images.has_image(i)]
            cached = [self.images.get(i) for i in ids]
            pixels = torch.cat([c["pixel_values"] for c in cached]).to(self.device)  # [sum P, d]
            grid = torch.stack([c["image_grid_thw"] for c in cached]).to(self.device)  # [I, 3]
            out = core.get_image_features(pixels, grid, return_dict=True)
            per_image = self.family.split(out)
            self._features.update(
                zip(ids, (tuple(t.detach() for t in f) for f in per_image), strict=True)
            )
        return [self._features[i] for i in image_ids]

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self._features.clear()  # .to(device/dtype) invalidates the cached vision features
        return super()._apply(fn, recurse)

    def encode_prompts(
        self, prompts: list[str], image_ids: list[int], padding_side: str = "left"
    ) -> torch.Tensor:
        """Prompts -> float32 ``[B, D]`` normalised last-token states."""
        device = self.device
        inputs = {
            k: v.to(device) for k, v in self.model_inputs(prompts, image_ids, padding_side).items()
        }
        core = unwrap(self.backbone).model  # e.g. Qwen2VLModel: hidden states without the LM head
        grid = inputs.get("image_grid_thw")
        positions, _ = core.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            image_grid_thw=grid,
            attention_mask=inputs["attention_mask"],
        )  # [3, B, S]
        vision: dict[str, Any] = {"pixel_values": inputs.get("pixel_values")}
        if self.vision_frozen and image_ids:
            # the cached outputs, in the class the model's forward reads (deepstack included)
            cached = self.family.join(self.image_features(image_ids))
            vision = {"mm_encoder_outputs": {"image": cached}}
        out = core(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=positions,
            image_grid_thw=grid,
            use_cache=False,
            **vision,
        )
        return l2_normalise(last_token_pool(out.last_hidden_state, inputs["attention_mask"]))

    def _encode_single(self, ids: list[int], view: View) -> torch.Tensor:
        """One prompt per item in one view (``joint`` fusion's ``both`` included) -> ``[N, D]``."""
        rows = [k for k, i in enumerate(ids) if view != "image" or self.images.has_image(i)]
        out = torch.zeros(len(ids), self.dim, device=self.device)
        if not rows:
            return out
        prompts, image_ids = [], []
        for k in rows:
            prompt, images = self.item_prompt(ids[k], view)
            prompts.append(prompt)
            image_ids.extend(images)
        index = torch.tensor(rows, device=out.device)
        return out.index_copy(0, index, self.encode_prompts(prompts, image_ids))

    def _has_image(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([self.images.has_image(i) for i in ids], device=self.device)

    def encode_items(self, item_ids: torch.Tensor, view: View) -> torch.Tensor:
        """See :class:`Embedder`; the ``image`` view of an item without image is a zero row."""
        if view == "both" and self.fusion == "external":
            return self.encode_views(item_ids, ("both",))["both"]
        return self._encode_single(self.check_item_ids(item_ids), view)

    def encode_views(
        self, item_ids: torch.Tensor, views: tuple[View, ...] = VIEWS
    ) -> dict[str, torch.Tensor]:
        """See :meth:`Embedder.encode_views`. Under ``external`` fusion the ``text`` and ``image``
        passes are run once and ``both`` is their normalised sum (``[N, D]`` each), so the
        training forward's three views cost two passes and gradients reach both through ``both``."""
        if self.fusion == "joint":
            return super().encode_views(item_ids, views)
        ids = self.check_item_ids(item_ids)
        needed: tuple[View, ...] = ("text", "image") if "both" in views else views
        single = {v: self._encode_single(ids, v) for v in needed}
        out = dict(single)
        if "both" in views:
            # fuse_mean = normalise(v^T + m v^I) of unit rows: the sum's direction (sum and mean
            # differ only in length); an item without image (m = 0, zero row) keeps v^T
            out["both"] = fuse_mean(single["text"], single["image"], self._has_image(ids))
        return {v: out[v] for v in views}

    def _encode_histories(self, rows: list[list[int]], view: View) -> torch.Tensor:
        prompts, image_ids = [], []
        for history in rows:
            prompt, images = self.sequence_prompt(history, view)
            prompts.append(prompt)
            image_ids.extend(images)
        return self.encode_prompts(prompts, image_ids)

    def encode_sequences(self, histories: torch.Tensor) -> torch.Tensor:
        r"""See :class:`Embedder`; an all-padding row is the empty-history prompt.

        ``external`` fusion: :math:`u = \mathrm{normalise}(u^T + u^I)` with ``u^T`` the text-only
        history prompt and ``u^I`` the image-only one (zero for a history without images)."""
        rows = self.check_histories(histories)
        if self.fusion == "joint":
            return self._encode_histories(rows, "both")
        text = self._encode_histories(rows, "text")  # [B, D]
        with_images = [b for b, h in enumerate(rows) if self.history_images(h)]
        image = torch.zeros_like(text)  # [B, D]
        if with_images:
            index = torch.tensor(with_images, device=text.device)
            part = self._encode_histories([rows[b] for b in with_images], "image")
            image = image.index_copy(0, index, part)
        has = torch.zeros(len(rows), dtype=torch.bool, device=text.device)
        has[with_images] = True
        return fuse_mean(text, image, has)

    def save_pretrained(self, folder: str | Path) -> None:
        """Merged checkpoint + tokenizer + image processor (see :class:`Embedder`)."""
        save_backbone(merged_copy(self.backbone), self.tokenizer, self.image_processor, folder)
