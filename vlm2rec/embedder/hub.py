"""Loading real checkpoints (hub id or local folder) and writing them back.

``embedder.name`` that is not a ``tiny-*`` model goes through ``from_pretrained`` with the
library's own tokenizer and image processor classes. Without torchvision, transformers picks the
PIL image processors (``Qwen2VLImageProcessorPil``, ``CLIPImageProcessorPil``, ...), which is what
the tiny models use too, so one code path serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, PreTrainedModel

from vlm2rec.embedder.families import DECODER_FAMILIES
from vlm2rec.embedder.tiny import Backbone

__all__ = ["FAMILIES", "EmbedderLoadError", "load_pretrained", "save_backbone"]

# model_type in config.json -> (family, transformers model class name, imported when it loads);
# the decoder families are Qwen2-VL, Qwen2.5-VL and Qwen3-VL (``families.DECODER_FAMILIES``), so
# a hub id and a local folder of any of them load the same way
FAMILIES: dict[str, tuple[str, str]] = {
    **{t: ("decoder", f.class_name) for t, f in DECODER_FAMILIES.items()},
    "clip": ("clip", "CLIPModel"),
    "siglip": ("siglip", "SiglipModel"),
}


class EmbedderLoadError(OSError):
    """A checkpoint named by ``embedder.name`` could not be loaded; the message says why and what to do."""


def _load_error(name: str, what: str, exc: BaseException) -> EmbedderLoadError:
    return EmbedderLoadError(
        f"embedder.name={name!r}: could not load the {what} ({type(exc).__name__}: {exc}). "
        "The name is neither a tiny-* model nor a readable checkpoint. Offline (HF_HUB_OFFLINE=1 or "
        "no network) a hub id only resolves from the local cache: download it once on a connected "
        "machine and set embedder.name to the local folder (config.json, weights, tokenizer and "
        "preprocessor_config.json)."
    )


def load_pretrained(name: str, *, dtype: torch.dtype) -> Backbone:
    """``from_pretrained`` of model, tokenizer and image processor; errors name the checkpoint."""
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise _load_error(name, "config", exc) from exc
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise EmbedderLoadError(
            f"embedder.name={name!r}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(FAMILIES)})"
        )
    family, class_name = FAMILIES[model_type]
    model_cls: type[PreTrainedModel] = getattr(transformers, class_name)
    try:
        model = model_cls.from_pretrained(name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
        image_processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise _load_error(name, "weights, tokenizer or image processor", exc) from exc
    model.eval()
    return Backbone(model, tokenizer, image_processor, family)


def save_backbone(
    model: PreTrainedModel, tokenizer: Any, image_processor: Any, folder: str | Path
) -> None:
    """Write a plain transformers checkpoint that :func:`load_pretrained` reads back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
