"""Tiny offline models: real transformers architectures with a few hundred thousand random weights.

``tiny-qwen2vl``, ``tiny-qwen2.5vl``, ``tiny-qwen3vl`` (decoder VLMs), ``tiny-clip`` and
``tiny-siglip`` (dual encoders) are built from a transformers config, an in-memory byte-level
tokenizer and the family's PIL image processor: no file, no network, and the same ``seed`` always
gives the same weights. They are the embedded default and the test models; sizes are chosen to run
fast on one CPU core (hidden 64, 2 layers, 4 heads; 4 image tokens per image for the decoders).
The three decoders share the decoder sizes and differ where their families differ (see
:func:`tiny_decoder_config` and :mod:`vlm2rec.embedder.families`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vlm2rec.embedder.families import DECODER_FAMILIES
from vlm2rec.embedder.tokenizer import BYTE_VOCAB, byte_level_tokenizer

__all__ = [
    "QWEN2VL_SPECIAL_TOKENS",
    "TINY_MODELS",
    "Backbone",
    "build_tiny",
    "padded_vocab",
    "qwen2vl_tokenizer",
    "qwen_token_ids",
    "tiny_decoder_config",
]

TINY_MODELS = ("tiny-qwen2vl", "tiny-qwen2.5vl", "tiny-qwen3vl", "tiny-clip", "tiny-siglip")
HIDDEN, LAYERS, HEADS, FFN = 64, 2, 4, 128
DUAL_IMAGE_SIDE, DUAL_PATCH = 32, 8  # 4x4 patches, the synthetic benchmark's native side
#: the special tokens of the decoder VLMs' tokenizer (the names Qwen2-VL, Qwen2.5-VL and Qwen3-VL share)
QWEN2VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


@dataclasses.dataclass
class Backbone:
    """A transformers model with the tokenizer and image processor that feed it.

    ``family`` is ``decoder`` (Qwen2-VL) or ``clip`` / ``siglip`` (dual encoders).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    family: str


def padded_vocab(n_special: int) -> int:
    """Bytes + specials, rounded up to a multiple of 8 (friendly matmul shapes)."""
    return -(-(BYTE_VOCAB + n_special) // 8) * 8


def qwen2vl_tokenizer() -> PreTrainedTokenizerBase:
    """The byte-level tokenizer with Qwen2-VL's special tokens (ids 256.., in
    :data:`QWEN2VL_SPECIAL_TOKENS` order); also used by ``bench/random_qwen2vl.py``."""
    return byte_level_tokenizer(
        list(QWEN2VL_SPECIAL_TOKENS), pad_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def qwen_token_ids() -> dict[str, Any]:
    """The special-token ids every Qwen-VL config names (``image_token_id``, ...), as the
    byte-level tokenizer of :func:`qwen2vl_tokenizer` assigns them."""
    tok = qwen2vl_tokenizer()
    ids = {t: int(tok.convert_tokens_to_ids(t)) for t in QWEN2VL_SPECIAL_TOKENS}  # type: ignore[arg-type]
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _qwen_text(mrope_section: list[int], **extra: Any) -> dict[str, Any]:
    """Decoder config shared by the three tiny Qwen-VL families: hidden 64, 2 layers, 4 heads of
    16 (2 KV heads); ``mrope_section`` splits the 8 rotary frequencies over (t, h, w)."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section}
    return {
        "vocab_size": padded_vocab(len(QWEN2VL_SPECIAL_TOKENS)),
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": rope,
        **extra,
    }


def tiny_decoder_config(model_type: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(text_config, vision_config)`` of a tiny decoder family (``qwen2_vl``, ``qwen2_5_vl``,
    ``qwen3_vl``), without token ids; also ``bench/random_qwen2vl.py``'s test presets.

    * Qwen2-VL: a LayerNorm + GELU-MLP vision tower of width ``embed_dim`` (``mlp_ratio``), whose
      merger outputs ``hidden_size`` (the decoder's width).
    * Qwen2.5-VL: RMSNorm + SwiGLU vision blocks of width ``hidden_size`` with a separate
      ``out_hidden_size``, and windowed attention: ``window_size`` 28 pixels is one merged 2x2
      patch group per window in block 0, full attention in block 1 (``fullatt_block_indexes``; the
      published model alternates 7 windowed blocks with 1 full one).
    * Qwen3-VL: patch 16, a learned 4x4 position grid (``num_position_embeddings``, interpolated to
      each image), deepstack features from both vision blocks added after decoder layers 0 and 1;
      a decoder with q/k RMSNorm, no attention bias, an explicit ``head_dim`` and interleaved
      M-RoPE: sections [4, 2, 2] of the 8 frequencies, the published [24, 20, 20] of 64 scaled
      down (Qwen2-VL's and Qwen2.5-VL's [2, 3, 3] are contiguous blocks).
    """
    patches = {"spatial_merge_size": 2, "temporal_patch_size": 2}
    if model_type == "qwen2_vl":
        vision = {"depth": LAYERS, "embed_dim": HIDDEN // 2, "hidden_size": HIDDEN, "num_heads": 2}
        return _qwen_text([2, 3, 3]), {**vision, "mlp_ratio": 2, "patch_size": 14, **patches}
    tower = {
        "depth": LAYERS,
        "hidden_size": HIDDEN // 2,
        "intermediate_size": HIDDEN,
        "num_heads": 2,
        "out_hidden_size": HIDDEN,
        **patches,
    }
    if model_type == "qwen2_5_vl":
        window = {"window_size": 28, "fullatt_block_indexes": [1]}
        return _qwen_text([2, 3, 3]), {**tower, "patch_size": 14, **window}
    if model_type == "qwen3_vl":
        text = _qwen_text([4, 2, 2], head_dim=HIDDEN // HEADS)
        text["rope_parameters"]["mrope_interleaved"] = True
        grid = {"num_position_embeddings": 16, "deepstack_visual_indexes": [0, 1]}
        return text, {**tower, "patch_size": 16, **grid}
    raise ValueError(f"tiny_decoder_config: unknown decoder family {model_type!r}")


def _tiny_decoder(model_type: str, image_side: int) -> Backbone:
    """A tiny decoder of one family with its byte-level tokenizer and PIL image processor, fixed at
    ``side x side`` pixels (a multiple of patch x merge: 4x4 patches -> 4 image tokens)."""
    # Each builder imports its own family's classes: a process that builds one model (a study's
    # Train worker) does not pay for the modelling code of the four others.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    family = DECODER_FAMILIES[model_type]
    text, vision = tiny_decoder_config(model_type)
    tok = qwen2vl_tokenizer()
    pad = int(tok.convert_tokens_to_ids("<|endoftext|>"))  # type: ignore[arg-type]
    text |= {"bos_token_id": pad, "eos_token_id": pad, "pad_token_id": pad}
    config = family.config(text, vision, **qwen_token_ids())
    patch = int(vision["patch_size"])
    side = image_side or 4 * patch  # 56 (patch 14) or 64 (Qwen3-VL's patch 16): 4x4 patches
    # Qwen3-VL normalises with mean = std = 0.5, the others with CLIP's statistics (the default)
    stats: dict[str, Any] = (
        {"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if model_type == "qwen3_vl" else {}
    )
    processor = Qwen2VLImageProcessorPil(
        min_pixels=side * side, max_pixels=side * side, patch_size=patch, merge_size=2, **stats
    )
    return Backbone(family.model_class(config), tok, processor, "decoder")


def _dual_towers(
    n_special: int, ids: dict[str, Any], image_side: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    common = {
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
    }
    text = {**common, "vocab_size": padded_vocab(n_special), "max_position_embeddings": 256, **ids}
    vision = {**common, "image_size": image_side, "patch_size": DUAL_PATCH}
    return text, vision


def _tiny_clip(image_side: int) -> Backbone:
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    specials = ["<|startoftext|>", "<|endoftext|>", "<|pad|>"]
    tok = byte_level_tokenizer(
        specials,
        pad_token="<|pad|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        add_bos_eos=True,
        padding_side="right",
        model_max_length=256,
    )
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,  # CLIP pools at the first eos
        "pad_token_id": tok.pad_token_id,
    }
    side = image_side or DUAL_IMAGE_SIDE
    text, vision = _dual_towers(len(specials), ids, side)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=HIDDEN)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    return Backbone(CLIPModel(config), tok, processor, "clip")


def _tiny_siglip(image_side: int) -> Backbone:
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    specials = ["</s>", "<pad>"]
    tok = byte_level_tokenizer(
        specials,
        pad_token="<pad>",
        eos_token="</s>",
        add_bos_eos=True,
        padding_side="right",
        model_max_length=256,
    )
    ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": None}
    side = image_side or DUAL_IMAGE_SIDE
    text, vision = _dual_towers(len(specials), ids, side)
    config = SiglipConfig(text_config=text, vision_config=vision)
    processor = SiglipImageProcessorPil(size={"height": side, "width": side})
    return Backbone(SiglipModel(config), tok, processor, "siglip")


def build_tiny(name: str, *, seed: int, image_side: int = 0) -> Backbone:
    """Build a tiny model by name with weights drawn from ``seed`` (the global RNG is untouched).

    Args:
        name: one of :data:`TINY_MODELS`.
        seed: weight-initialisation seed.
        image_side: square input side in pixels (0 = the tiny default; decoders round it to a
            multiple of patch x merge: 28, Qwen3-VL 32).
    """
    builders: dict[str, Callable[[int], Backbone]] = {
        "tiny-qwen2vl": functools.partial(_tiny_decoder, "qwen2_vl"),
        "tiny-qwen2.5vl": functools.partial(_tiny_decoder, "qwen2_5_vl"),
        "tiny-qwen3vl": functools.partial(_tiny_decoder, "qwen3_vl"),
        "tiny-clip": _tiny_clip,
        "tiny-siglip": _tiny_siglip,
    }
    if name not in builders:
        raise ValueError(f"embedder.name: {name!r} is not a tiny model ({', '.join(TINY_MODELS)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = builders[name](image_side)
    backbone.model.eval()
    return backbone
