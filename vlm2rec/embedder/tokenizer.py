"""An in-memory byte-level tokenizer for the tiny offline models: no file, no download.

Every UTF-8 byte is one token (a byte-level BPE with the 256-symbol alphabet and no merges), plus
the special tokens a model family needs, appended after the bytes. Wrapped in
:class:`transformers.PreTrainedTokenizerFast` so the backends treat it like a real checkpoint's
tokenizer (``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip).
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

__all__ = ["BYTE_VOCAB", "byte_level_tokenizer"]

BYTE_VOCAB = 256


def _post_processor(
    bos: str | None, eos: str | None, ids: dict[str, int]
) -> processors.TemplateProcessing:
    """``[bos] $A [eos]`` so that towers that pool at a special token always find it."""
    parts = ([bos] if bos else []) + ["$A"] + ([eos] if eos else [])
    used = [(t, ids[t]) for t in (bos, eos) if t]
    return processors.TemplateProcessing(single=" ".join(parts), special_tokens=used)


def byte_level_tokenizer(
    special_tokens: Sequence[str],
    *,
    pad_token: str,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_bos_eos: bool = False,
    padding_side: str = "left",
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Build the tokenizer; special tokens get ids ``256, 257, ...`` in the order given.

    Args:
        special_tokens: all special strings (must include the pad/bos/eos tokens named below).
        pad_token, bos_token, eos_token: roles of some of those strings.
        add_bos_eos: wrap every encoded text as ``bos text eos`` (CLIP/SigLIP text towers).
        padding_side: ``left`` for decoders (last-token pooling), ``right`` for encoders.
        model_max_length: the length truncation falls back to.
    """
    roles = [t for t in (pad_token, bos_token, eos_token) if t]
    missing = [t for t in roles if t not in special_tokens]
    if missing:
        raise ValueError(f"byte_level_tokenizer: role tokens {missing} are not in special_tokens")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for the bytes
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no word splitting, so each byte maps to exactly one token
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(special_tokens))
    ids = {t: BYTE_VOCAB + i for i, t in enumerate(special_tokens)}
    if add_bos_eos:
        core.post_processor = _post_processor(bos_token, eos_token, ids)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=pad_token,
        bos_token=bos_token,
        eos_token=eos_token,
        padding_side=padding_side,
        model_max_length=model_max_length,
    )
