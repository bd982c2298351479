"""Which weights train: LoRA adapters on the language model, full fine-tuning, or nothing.

``embedder.finetune``:

* ``lora`` (default): peft LoRA adapters on the ``embedder.lora_target_modules`` of the *language
  model / text tower only* (a regex anchored at its module prefix, so vision modules with the same
  names are never adapted); every base weight is frozen. With ``freeze_vision = false`` the vision
  tower is additionally trained in full (LoRA names rarely match vision blocks, e.g. Qwen2-VL's
  ``qkv``/``proj``, so full training is the one reading that works for every family).
* ``full``: every weight the embedding uses trains, except the vision tower when ``freeze_vision``.
* ``frozen``: nothing in the backbone trains.

Weights the embedding never uses (the LM head, CLIP/SigLIP logit scale and bias) are always frozen:
a trainable unused weight wastes optimiser memory and makes DDP fail on unused parameters.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Sequence
from typing import cast

import torch
from transformers import PreTrainedModel

__all__ = ["configure_finetuning", "merged_copy", "unwrap"]


def _lora_regex(text_prefix: str, target_modules: Sequence[str]) -> str:
    names = "|".join(re.escape(m) for m in target_modules)
    return rf"{re.escape(text_prefix)}.*\.({names})"


def _set_trainable(model: torch.nn.Module, prefixes: tuple[str, ...], flag: bool) -> None:
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(flag)


def configure_finetuning(
    model: PreTrainedModel,
    *,
    mode: str,
    text_prefix: str,
    vision_prefixes: tuple[str, ...],
    unused_prefixes: tuple[str, ...],
    target_modules: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float,
    freeze_vision: bool,
) -> torch.nn.Module:
    """Set ``requires_grad`` (and inject LoRA) per ``mode``; returns the module to register.

    Call under a seeded RNG: LoRA's ``A`` matrices are drawn at injection (``B`` starts at zero, so
    a fresh adapter leaves the function unchanged).
    """
    if mode not in ("lora", "full", "frozen"):
        raise ValueError(f"embedder.finetune: expected lora, full or frozen, got {mode!r}")
    if mode != "lora":
        model.requires_grad_(mode == "full")
        if freeze_vision:
            _set_trainable(model, vision_prefixes, False)
        _set_trainable(model, unused_prefixes, False)
        return model
    from peft import LoraConfig, get_peft_model  # only LoRA runs pay peft's import (~1 s)

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # annotated int, used as the ratio alpha / r
        lora_dropout=dropout,
        target_modules=_lora_regex(text_prefix, target_modules),
        bias="none",
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:
        raise ValueError(
            f"embedder.lora_target_modules={list(target_modules)}: no module under "
            f"'{text_prefix}' of {type(model).__name__} matches ({exc})"
        ) from exc
    if not freeze_vision:
        _set_trainable(wrapped.get_base_model(), vision_prefixes, True)
    return wrapped


def _is_peft(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a peft model; without peft imported, none can be."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(module, peft.PeftModel)


def unwrap(module: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside a (possibly peft-wrapped) backbone; LoRA layers stay injected."""
    if _is_peft(module):
        return cast(PreTrainedModel, module.get_base_model())  # type: ignore[operator]
    assert isinstance(module, PreTrainedModel)
    return module


def merged_copy(module: torch.nn.Module) -> PreTrainedModel:
    """A plain transformers model with LoRA merged into the base weights (the original is untouched)."""
    if _is_peft(module):
        return cast(PreTrainedModel, copy.deepcopy(module).merge_and_unload())  # type: ignore[operator]
    assert isinstance(module, PreTrainedModel)
    return module
