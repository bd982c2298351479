r"""What differs between the decoder-VLM families, and only that: Qwen2-VL, Qwen2.5-VL, Qwen3-VL.

One :class:`~vlm2rec.embedder.decoder.DecoderEmbedder` serves the three families, because in the
installed transformers they share the parts the embedder touches:

* module layout: ``model.visual.`` (vision tower), ``model.language_model.`` (decoder), ``lm_head.``;
* prompt tokens: ``<|vision_start|>``, ``<|image_pad|>`` (one per *merged* patch), ``<|vision_end|>``,
  whose ids the model config names (``image_token_id``, ``vision_start_token_id``, ...);
* the image processor: ``Qwen2VLImageProcessorPil`` for all three (what differs is its settings:
  Qwen2-VL / Qwen2.5-VL patch 14, CLIP mean/std; Qwen3-VL patch 16, mean = std = 0.5), so an image
  of ``h x w`` patches is ``h*w / merge**2`` image tokens in every family;
* the multimodal RoPE: ``model.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=...,
  attention_mask=...)`` returns ``[3, B, S]`` positions (temporal, height, width). For still images
  the three compute the same indices (Qwen2.5-VL's ``second_per_grid_ts`` only spaces video frames;
  Qwen3-VL only splits video grids per frame); Qwen3-VL *applies* them interleaved across the rotary
  frequencies (``mrope_section`` read as a stride pattern) instead of in three contiguous blocks,
  which is inside the model and needs nothing from us;
* ``mm_token_type_ids`` (1 = image placeholder): Qwen3-VL refuses multimodal input without it.

What differs for the embedder is the **vision tower's output**. Qwen2-VL and Qwen2.5-VL return one
merged feature per image token (``pooler_output``, split per image). Qwen3-VL also returns
*deepstack* features: the outputs of ``deepstack_visual_indexes`` intermediate vision blocks,
each through its own merger, which the decoder adds to the image-token hidden states after its
first layers,

.. math:: h^{(\ell)}_{t} \leftarrow h^{(\ell)}_{t} + d^{(\ell)}_{t}, \qquad
          \ell < K,\ t \in \text{image tokens},

so a cache of frozen vision outputs must keep all :math:`1 + K` tensors per image, and hand them
back in the output class the model reads (``BaseModelOutputWithDeepstackFeatures``). (The towers
differ inside too, e.g. Qwen2.5-VL's windowed attention and RMSNorm/SwiGLU blocks, Qwen3-VL's learned
position grid, and their config keys: ``embed_dim``/``mlp_ratio`` vs
``hidden_size``/``intermediate_size``/``out_hidden_size``; only the tiny builders see those.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import transformers
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

__all__ = ["DECODER_FAMILIES", "DecoderFamily", "VisionFeatures"]

#: the vision outputs of one image: ``(merged [n, D], deepstack_0 [n, D], ...)``, ``n`` its tokens
VisionFeatures = tuple[torch.Tensor, ...]


@dataclasses.dataclass(frozen=True)
class DecoderFamily:
    """One decoder-VLM family: its transformers class and the shape of its vision outputs.

    Attributes:
        model_type: ``config.json``'s ``model_type`` (how a checkpoint names its family).
        label: the family's name in messages.
        class_name: the transformers ``...ForConditionalGeneration`` class that loads it, by name:
            importing a family's modelling code costs every process that imports this module
            (each Ray Train worker of a study) about 0.5 s, so only the family in use is imported.
        deepstack: whether the vision tower also returns deepstack features (Qwen3-VL).
    """

    model_type: str
    label: str
    class_name: str
    deepstack: bool = False

    @property
    def model_class(self) -> type[PreTrainedModel]:
        """The transformers class (imported on first use)."""
        return getattr(transformers, self.class_name)

    def config(
        self, text: dict[str, Any], vision: dict[str, Any], **kwargs: Any
    ) -> PreTrainedConfig:
        """The family's model config (``Qwen2VLConfig``, ...) from text and vision sub-configs;
        ``kwargs`` are top-level keys (token ids, ``tie_word_embeddings``)."""
        cls: Any = self.model_class.config_class  # a Qwen*VLConfig, which takes both sub-configs
        return cls(text_config=text, vision_config=vision, **kwargs)

    def split(self, out: Any) -> list[VisionFeatures]:
        """``model.get_image_features(...)`` output -> per image ``(merged, *deepstack)``.

        Shapes: ``pooler_output`` is a tuple of ``[n_i, D]`` (one per image); ``deepstack_features``
        a list over the K levels of such tuples. Result: per image, ``1 + K`` tensors ``[n_i, D]``.
        """
        merged = tuple(out.pooler_output)
        if not self.deepstack:
            return [(m,) for m in merged]
        levels = [tuple(level) for level in out.deepstack_features]  # K x I x [n_i, D]
        return [(m, *(level[i] for level in levels)) for i, m in enumerate(merged)]

    def join(self, images: Sequence[VisionFeatures]) -> BaseModelOutputWithPooling:
        """Inverse of :meth:`split`: the ``mm_encoder_outputs["image"]`` the model's forward reads,
        with the images in prompt order."""
        merged = tuple(f[0] for f in images)
        if not self.deepstack:
            return BaseModelOutputWithPooling(pooler_output=merged)  # type: ignore[arg-type]
        from transformers.models.qwen3_vl.modeling_qwen3_vl import (
            BaseModelOutputWithDeepstackFeatures,
        )

        k = len(images[0]) - 1
        levels = [tuple(f[1 + j] for f in images) for j in range(k)]
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=merged,  # type: ignore[arg-type]
            deepstack_features=levels,  # type: ignore[arg-type]
        )


#: model_type -> family; ``hub.load_pretrained`` and the tiny builders pick from this table
DECODER_FAMILIES: dict[str, DecoderFamily] = {
    f.model_type: f
    for f in (
        DecoderFamily("qwen2_vl", "Qwen2-VL", "Qwen2VLForConditionalGeneration"),
        DecoderFamily("qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration"),
        DecoderFamily("qwen3_vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration", deepstack=True),
    )
}
