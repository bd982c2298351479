"""The embedder protocol every backend implements (METHOD.md §2).

An :class:`Embedder` turns item ids into one of three L2-normalised item views
(``both`` = image and text, ``text``, ``image``) and left-padded histories of item ids into
L2-normalised sequence embeddings. The training loop and the evaluator only see this class.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Literal, get_args

import torch

from vlm2rec.config import ConfigError
from vlm2rec.data.catalogue import Catalogue

__all__ = ["FUSIONS", "VIEWS", "Embedder", "View", "resolve_dtype", "resolve_fusion"]

View = Literal["both", "text", "image"]
VIEWS: tuple[View, ...] = get_args(View)

#: ``embedder.fusion`` values per backend kind, the first one being what ``auto`` means
FUSIONS: dict[str, tuple[str, ...]] = {
    "decoder": ("joint", "external"),
    "dual": ("mean", "concat_proj"),
}


def resolve_fusion(fusion: str, kind: str, model: str) -> str:
    """``embedder.fusion`` for a backend kind (``decoder`` or ``dual``): ``auto`` becomes the kind's
    default, a value of the other kind is a :class:`ConfigError` naming the valid ones."""
    valid = FUSIONS[kind]
    if fusion == "auto":
        return valid[0]
    if fusion not in valid:
        what = "a decoder VLM" if kind == "decoder" else "a dual encoder"
        raise ConfigError(
            f"embedder.fusion: {model!r} is {what}, which takes one of auto, "
            f"{', '.join(valid)} (auto = {valid[0]}), got {fusion!r}"
        )
    return fusion


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``embedder.dtype`` -> torch dtype; ``auto`` is bf16 on CUDA (half the memory, tensor cores)
    and fp32 on CPU (CPU bf16 matmuls are slow and lossy)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"embedder.dtype: expected one of auto, fp32, bf16, got {name!r}")
    return table[name]


class Embedder(torch.nn.Module, abc.ABC):
    """Base class of all VLM embedders.

    Attributes:
        dim: output dimension ``D`` of every embedding.
        catalogue: the items (index = item id, entry 0 = padding).

    Conventions shared by all backends:

    * outputs are float32 and L2-normalised per row, whatever the compute dtype;
    * a view an item cannot form (the ``image`` view of an item without image) is a **zero row**,
      so that its similarity to anything is 0 and it can never look like a good match;
    * the ``both`` view of an item without image is its text-only input;
    * a history of only padding encodes the *empty history* (the sequence prompt with no items):
      one fixed, normalised vector shared by all such rows.
    """

    dim: int
    catalogue: Catalogue

    @abc.abstractmethod
    def encode_items(self, item_ids: torch.Tensor, view: View) -> torch.Tensor:
        """``LongTensor[N]`` of ids in ``1..num_items`` -> float32 ``[N, D]``, L2-normalised rows
        (zero rows where the view cannot be formed)."""

    @abc.abstractmethod
    def encode_sequences(self, histories: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B, L]`` (0 = padding on the left, newest item last) -> float32 ``[B, D]``."""

    @abc.abstractmethod
    def save_pretrained(self, folder: str | Path) -> None:
        """Write a plain transformers checkpoint (LoRA merged in), tokenizer and image processor,
        such that ``embedder.name = folder`` rebuilds the same function."""

    def encode_views(
        self, item_ids: torch.Tensor, views: tuple[View, ...] = VIEWS
    ) -> dict[str, torch.Tensor]:
        """Several views of the same items: ``{v: encode_items(ids, v)}``, each float32 ``[N, D]``.

        A backend whose fused view is built from its single views overrides this to share the
        forward passes between the views (the decoder's external fusion)."""
        return {v: self.encode_items(item_ids, v) for v in views}

    def forward(
        self, histories: torch.Tensor, item_ids: torch.Tensor, views: tuple[View, ...] = VIEWS
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sequences and item views in one call, so that ``DistributedDataParallel`` (which hooks
        ``forward``) can wrap an embedder: ``(encode_sequences(h), encode_views(ids, views))``."""
        return self.encode_sequences(histories), self.encode_views(item_ids, views)

    @property
    def device(self) -> torch.device:
        """Device of the embedder's parameters."""
        return next(self.parameters()).device

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Copies (on CPU) of exactly the parameters with ``requires_grad``, by qualified name."""
        return {
            n: p.detach().to("cpu", copy=True)
            for n, p in self.named_parameters()
            if p.requires_grad
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load values saved by :meth:`trainable_state_dict`; strict on the trainable names and shapes."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise KeyError(
                f"trainable state of {type(self).__name__}: missing keys {missing[:5]} "
                f"({len(missing)}), unexpected keys {unexpected[:5]} ({len(unexpected)})"
            )
        with torch.no_grad():
            for name, param in params.items():
                if tuple(state[name].shape) != tuple(param.shape):
                    raise ValueError(
                        f"trainable state key {name}: expected shape {tuple(param.shape)}, "
                        f"got {tuple(state[name].shape)}"
                    )
                param.copy_(state[name].to(param.device, param.dtype))

    def check_item_ids(self, item_ids: torch.Tensor) -> list[int]:
        """Validate a 1-D id tensor against the catalogue; return the ids as Python ints."""
        if item_ids.dim() != 1:
            raise ValueError(
                f"item_ids: expected a 1-D LongTensor, got shape {tuple(item_ids.shape)}"
            )
        ids = [int(i) for i in item_ids.tolist()]
        bad = [i for i in ids if not 1 <= i <= self.catalogue.num_items]
        if bad:
            raise ValueError(
                f"item_ids: ids must be in 1..{self.catalogue.num_items} (0 is padding), got {bad[:5]}"
            )
        return ids

    def check_histories(self, histories: torch.Tensor) -> list[list[int]]:
        """Validate ``[B, L]`` histories; return each row's real ids, oldest first."""
        if histories.dim() != 2:
            raise ValueError(
                f"histories: expected a 2-D LongTensor [B, L], got {tuple(histories.shape)}"
            )
        rows = [[int(i) for i in row if int(i) != 0] for row in histories.tolist()]
        bad = [i for row in rows for i in row if not 1 <= i <= self.catalogue.num_items]
        if bad:
            raise ValueError(
                f"histories: ids must be in 0..{self.catalogue.num_items}, got {bad[:5]}"
            )
        return rows
