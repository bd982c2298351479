r"""Item images decoded, resized and laid out once per item, then kept compactly (never redone per step).

The image processor is the model family's own (PIL backend, no torchvision). It runs once per item
with rescaling and normalisation switched off, so what it returns are the resized pixel values in
the model's layout, integers in ``[0, 255]``: those are cached as ``uint8`` (Qwen2-VL patch rows are
also stored without their temporal copies, which are identical for a still image). Reading an item
applies the processor's own last two steps, in the processor's own arithmetic:

.. math:: x = \mathrm{f32}(\mathrm{f64}(u)\cdot s), \qquad \tilde x_c = (x_c - \mu_c) / \sigma_c

(``s`` = ``rescale_factor``, :math:`\mu, \sigma` = ``image_mean``, ``image_std``), so the result equals
the processor's output exactly (a test checks it) at 1/8 of the memory of caching float32 patches:
3 bytes per resized pixel.
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


def _channel_view(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Put channels on axis 1: Qwen2-VL patch rows ``[P, C*T*p*p]`` -> ``[P, C, T*p*p]``;
    an image ``[C, H, W]`` -> ``[1, C, H*W]``."""
    if x.dim() == 2:
        return x.reshape(x.shape[0], channels, -1)
    return x.reshape(1, channels, -1)


class ImageCache:
    """Per-item preprocessed images, computed lazily on first request and kept as ``uint8``.

    Args:
        images: encoded bytes (or ``None``) indexed by item id, as in ``Catalogue.images``.
        processor: a transformers image processor (called on one image at a time).
        call_kwargs: extra processor arguments (e.g. a pixel budget).

    ``get(i)`` returns exactly what ``processor(images=[img_i], return_tensors="pt")`` returns, with
    the batch axis removed for fixed-size outputs (``pixel_values [3, H, W]``) and kept for patch
    sequences (Qwen2-VL: ``pixel_values [P, C*T*p*p]``, ``image_grid_thw [3]``).
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
        self._raw: dict[int, tuple[torch.Tensor, torch.Tensor | None, int]] = {}

    def has_image(self, item_id: int) -> bool:
        """Whether the item carries an image."""
        return self._images[item_id] is not None

    def __len__(self) -> int:
        """Number of items processed so far."""
        return len(self._raw)

    def cached_bytes(self) -> int:
        """Memory held by the cache (pixel storage only)."""
        return sum(raw.numel() * raw.element_size() for raw, _, _ in self._raw.values())

    def _process(self, item_id: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        data = self._images[item_id]
        if data is None:
            raise KeyError(f"item_id={item_id} has no image")
        out = self._processor(
            images=[decode_image(data, item_id)],
            return_tensors="pt",
            do_rescale=False,
            do_normalize=False,
            **self._kwargs,
        )
        grid = out.get("image_grid_thw")
        raw = out["pixel_values"] if grid is not None else out["pixel_values"][0]
        temporal = 1
        if grid is not None:
            temporal = int(getattr(self._processor, "temporal_patch_size", 1))
            split = raw.reshape(raw.shape[0], 3, temporal, -1)  # [P, C, T, p*p]
            if all(torch.equal(split[:, :, 0], split[:, :, t]) for t in range(temporal)):
                raw = split[:, :, 0].contiguous()  # a still image: the T copies are identical
            else:
                temporal = 1
        if torch.equal(raw, raw.round()) and raw.min() >= 0 and raw.max() <= 255:
            raw = raw.to(torch.uint8)  # resized pixels are integers: store them exactly
        return raw, None if grid is None else grid[0], temporal

    def _finish(self, raw: torch.Tensor, temporal: int) -> torch.Tensor:
        """Undo the compact storage and apply the processor's rescale and normalise steps."""
        proc = self._processor
        x = raw
        if temporal > 1:
            x = x.unsqueeze(2).expand(-1, -1, temporal, -1).reshape(x.shape[0], -1)
        if getattr(proc, "do_rescale", True):
            # the PIL processor multiplies in float64, then casts to float32
            x = (x.to(torch.float64) * float(proc.rescale_factor)).to(torch.float32)
        x = x.to(torch.float32)
        if getattr(proc, "do_normalize", True):
            shape = x.shape
            mean = torch.tensor(proc.image_mean, dtype=torch.float32).view(1, -1, 1)
            std = torch.tensor(proc.image_std, dtype=torch.float32).view(1, -1, 1)
            x = ((_channel_view(x, mean.shape[1]) - mean) / std).reshape(shape)
        return x

    def get(self, item_id: int) -> dict[str, torch.Tensor]:
        """The processor's tensors for one item; raises if the item has no image."""
        if item_id not in self._raw:
            self._raw[item_id] = self._process(item_id)
        raw, grid, temporal = self._raw[item_id]
        out = {"pixel_values": self._finish(raw, temporal)}
        if grid is not None:
            out["image_grid_thw"] = grid
        return out
