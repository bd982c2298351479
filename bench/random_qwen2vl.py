"""Write a randomly initialised Qwen2-VL or Qwen2.5-VL checkpoint folder that ``embedder.name = <folder>`` loads.

Presets:

* ``2b``: the published Qwen2-VL-2B(-Instruct) dimensions (text: hidden 1536, 28 layers, 12 heads,
  2 KV heads, intermediate 8960, vocab 151936, tied embeddings, M-RoPE sections [16, 24, 24],
  theta 1e6; vision: depth 32, embed_dim 1280, hidden_size 1536, 16 heads, mlp_ratio 4, patch 14,
  merge 2, temporal patch 2) and the processor's default pixel range, about 2.2 B parameters.
  Same compute and memory per token as the real model, no download: the GPU smoke test
  (``bench/gpu.sh``) uses it.
* ``2.5-3b``: the published Qwen2.5-VL-3B(-Instruct) dimensions (text: hidden 2048, 36 layers,
  16 heads, 2 KV heads, intermediate 11008, vocab 151936, tied embeddings, M-RoPE [16, 24, 24],
  theta 1e6; vision: depth 32, hidden 1280, SwiGLU intermediate 3420, 16 heads, out_hidden 2048,
  windowed attention (window 112 pixels, full attention in blocks 7, 15, 23, 31), patch 14, merge
  2), about 3.75 B parameters: the backbone a secondary summary of the paper reports;
  ``bench/gpu.sh`` times a LoRA step with it.
* ``test`` and ``2.5-test``: the same architectures with ``tiny-qwen2vl``'s and
  ``tiny-qwen2.5vl``'s dimensions (``vlm2rec.embedder.tiny.tiny_decoder_config``: hidden 64,
  2 layers), for CPU tests of the very same code path (``from_pretrained`` instead of the
  in-memory tiny model).

The tokenizer is the project's byte-level tokenizer with the special tokens the tiny decoders use
(ids 256..260; the full-size embedding tables keep the published 151936 rows, the unused ones
included), the image processor ``Qwen2VLImageProcessorPil`` (both families use it) as in
``vlm2rec/embedder/tiny.py``. Weights come from transformers' own initialisation under
``torch.manual_seed(--seed)``; the same seed gives the same weights on the same device type (CPU
and CUDA generators differ). The folder is written with ``vlm2rec.embedder.hub.save_backbone``
plus ``random_init.json`` (preset, family, seed, dtype, parameter count, device).

Usage::

    python bench/random_qwen2vl.py --preset 2b --out /tmp/qwen2vl-2b-random   # cuda when present
    python bench/random_qwen2vl.py --preset 2.5-3b --count-only               # meta device, no memory
    python bench/random_qwen2vl.py --preset test --dtype fp32 --out /tmp/qwen2vl-test-random
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlm2rec.embedder.families import DECODER_FAMILIES
from vlm2rec.embedder.hub import save_backbone
from vlm2rec.embedder.tiny import (
    Backbone,
    qwen2vl_tokenizer,
    qwen_token_ids,
    tiny_decoder_config,
)

__all__ = [
    "DTYPES",
    "PRESETS",
    "Preset",
    "build",
    "count_params",
    "main",
    "model_config",
    "write",
]

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclasses.dataclass(frozen=True)
class Preset:
    """One random checkpoint: its family (``model_type``), sub-configs and processor arguments."""

    family: str
    text: dict[str, Any]
    vision: dict[str, Any]
    processor: dict[str, Any] = dataclasses.field(default_factory=dict)


#: the published decoders' text config keys shared by Qwen2-VL-2B and Qwen2.5-VL-3B
_PUBLISHED_TEXT = {
    "vocab_size": 151936,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": [16, 24, 24],  # head_dim 128 -> 64 frequencies (t, h, w)
    },
}
#: the tiny models' pixel range: 56 x 56, 4 merged image tokens
_TINY_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}

PRESETS: dict[str, Preset] = {
    "2b": Preset(
        "qwen2_vl",
        {
            **_PUBLISHED_TEXT,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "max_position_embeddings": 32768,
            "max_window_layers": 28,
        },
        {
            "depth": 32,
            "embed_dim": 1280,
            "hidden_size": 1536,
            "num_heads": 16,
            "mlp_ratio": 4,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        {},  # the processor's defaults: min 56 x 56 pixels, max 28 x 28 x 1280
    ),
    "2.5-3b": Preset(
        "qwen2_5_vl",
        {
            **_PUBLISHED_TEXT,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "max_position_embeddings": 128000,
            "max_window_layers": 70,
        },
        {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "hidden_act": "silu",
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
        },
        {},
    ),
    "test": Preset("qwen2_vl", *tiny_decoder_config("qwen2_vl"), _TINY_PIXELS),
    "2.5-test": Preset("qwen2_5_vl", *tiny_decoder_config("qwen2_5_vl"), _TINY_PIXELS),
}


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def model_config(preset: str) -> PreTrainedConfig:
    """The model config of a preset (``Qwen2VLConfig`` or ``Qwen2_5_VLConfig``), with the
    byte-level tokenizer's special-token ids and tied embeddings."""
    p = _preset(preset)
    tok = qwen2vl_tokenizer()
    pad = int(tok.convert_tokens_to_ids("<|endoftext|>"))  # type: ignore[arg-type]
    text = {**p.text, "bos_token_id": pad, "eos_token_id": pad, "pad_token_id": pad}
    family = DECODER_FAMILIES[p.family]
    return family.config(text, dict(p.vision), **qwen_token_ids(), tie_word_embeddings=True)


def _model(preset: str, dtype: torch.dtype, device: torch.device | str) -> torch.nn.Module:
    cls: Any = DECODER_FAMILIES[_preset(preset).family].model_class
    with torch.device(device):
        return cls._from_config(model_config(preset), dtype=dtype)


def count_params(preset: str) -> int:
    """Parameters of a preset (tied embeddings counted once), built on the meta device."""
    model = _model(preset, torch.float32, "meta")
    return sum(p.numel() for p in model.parameters())


def build(
    preset: str, *, seed: int = 0, dtype: str = "bf16", device: str | torch.device = "cpu"
) -> Backbone:
    """Model (initialised under ``torch.manual_seed(seed)``, eval mode), tokenizer, processor.

    The global RNG state is restored afterwards.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = _model(preset, DTYPES[dtype], device)
    model.eval()
    processor = Qwen2VLImageProcessorPil(**_preset(preset).processor)
    return Backbone(model, qwen2vl_tokenizer(), processor, "decoder")  # type: ignore[arg-type]


def write(
    preset: str,
    out: str | Path,
    *,
    seed: int = 0,
    dtype: str = "bf16",
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Build a preset and save it to ``out`` (loadable by ``load_pretrained``); returns the record
    also written to ``out/random_init.json``."""
    t0 = time.perf_counter()
    backbone = build(preset, seed=seed, dtype=dtype, device=device)
    t_build = time.perf_counter() - t0
    save_backbone(backbone.model, backbone.tokenizer, backbone.image_processor, out)
    record = {
        "preset": preset,
        "family": _preset(preset).family,
        "seed": seed,
        "dtype": dtype,
        "device": str(device),
        "params": sum(p.numel() for p in backbone.model.parameters()),
        "build_s": round(t_build, 2),
        "save_s": round(time.perf_counter() - t0 - t_build, 2),
    }
    (Path(out) / "random_init.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _human(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.3f} M"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--preset", choices=sorted(PRESETS), default="2b")
    p.add_argument("--out", type=Path, default=None, help="folder to write (required to build)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument(
        "--device", default="auto", help="where to initialise: auto (cuda when there), cpu, cuda"
    )
    p.add_argument(
        "--count-only", action="store_true", help="print the parameter count (meta device) and exit"
    )
    args = p.parse_args(argv)
    if not args.count_only and args.out is None:
        p.error("--out is required unless --count-only")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.count_only:
        n = count_params(args.preset)
        print(f"{args.preset}: {n} parameters ({_human(n)})")
        return 0
    rec = write(args.preset, args.out, seed=args.seed, dtype=args.dtype, device=args.device)
    n = rec["params"]
    print(
        f"wrote {args.out}: {DECODER_FAMILIES[rec['family']].label} preset {args.preset}, "
        f"{n} parameters ({_human(n)}), "
        f"{args.dtype}, initialised on {args.device} in {rec['build_s']} s, saved in {rec['save_s']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
