"""Item images decoded and preprocessed once, then kept as tensors (never redone per step).

The image processor is the model family's own (PIL backend, no torchvision); this module only
decodes the catalogue's PNG/JPEG bytes, calls it once per item on first use and caches the result.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageCache", "decode_image"]


def decode_image(data: bytes, item_id: int) -> Image.Image:
    """PNG/JPEG bytes -> RGB PIL image; an undecodable blob is an error naming the item."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(
            f"items.parquet row item_id={item_id}: column 'image' holds {len(data)} bytes that are "
            f"not a decodable PNG/JPEG ({exc})"
        ) from exc


class ImageCache:
    """Per-item preprocessed image tensors, computed lazily on first request.

    Args:
        images: encoded bytes (or ``None``) indexed by item id, as in ``Catalogue.images``.
        processor: a transformers image processor (called on one image at a time).
        call_kwargs: extra processor arguments (e.g. a pixel budget).

    ``get(i)`` returns the processor's tensors for item ``i`` with the batch axis removed for
    fixed-size outputs (``pixel_values [3, H, W]``) and kept as-is for patch sequences
    (Qwen2-VL: ``pixel_values [P, C*T*p*p]``, ``image_grid_thw [3]``).
    """

    def __init__(
        self,
        images: Sequence[bytes | None],
        processor: Any,
        call_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self._images = images
        self._processor = processor
        self._kwargs = dict(call_kwargs or {})
        self._cache: dict[int, dict[str, torch.Tensor]] = {}

    def has_image(self, item_id: int) -> bool:
        """Whether the item carries an image."""
        return self._images[item_id] is not None

    def __len__(self) -> int:
        """Number of items processed so far."""
        return len(self._cache)

    def get(self, item_id: int) -> dict[str, torch.Tensor]:
        """The cached tensors of one item; raises if the item has no image."""
        if item_id not in self._cache:
            data = self._images[item_id]
            if data is None:
                raise KeyError(f"item_id={item_id} has no image")
            out = self._processor(
                images=[decode_image(data, item_id)], return_tensors="pt", **self._kwargs
            )
            tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
            if "image_grid_thw" in tensors:
                # patch sequence: keep [P, d] pixels, drop the batch axis of the grid only
                tensors["image_grid_thw"] = tensors["image_grid_thw"][0]
            else:
                tensors = {k: v[0] for k, v in tensors.items()}
            self._cache[item_id] = tensors
        return self._cache[item_id]
