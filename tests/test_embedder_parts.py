"""Pure parts of the embedders: pooling, fusion, tokenizer, prompt clipping, image cache."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlm2rec.data.catalogue import Catalogue
from vlm2rec.embedder.image_cache import ImageCache, decode_image
from vlm2rec.embedder.pooling import fuse_concat_proj, fuse_mean, last_token_pool, masked_mean
from vlm2rec.embedder.prompts import TextClipper, check_template
from vlm2rec.embedder.tokenizer import BYTE_VOCAB, byte_level_tokenizer


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=5), seed=st.integers(0, 1000))
def test_last_token_pool_picks_the_same_token_for_left_and_right_padding(
    lengths: list[int], seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    s, h = max(lengths), 3
    tokens = [torch.randn(n, h, generator=gen) for n in lengths]
    left, right = torch.zeros(len(lengths), s, h), torch.zeros(len(lengths), s, h)
    mask_l, mask_r = torch.zeros(len(lengths), s), torch.zeros(len(lengths), s)
    for b, t in enumerate(tokens):
        n = t.shape[0]
        left[b, s - n :], mask_l[b, s - n :] = t, 1
        right[b, :n], mask_r[b, :n] = t, 1
    expected = torch.stack([t[-1] for t in tokens])
    assert torch.equal(last_token_pool(left, mask_l), expected)
    assert torch.equal(last_token_pool(right, mask_r), expected)


def test_last_token_pool_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="disagree"):
        last_token_pool(torch.zeros(2, 3, 4), torch.ones(2, 4))


def test_masked_mean_by_hand_and_empty_group_is_zero() -> None:
    x = torch.tensor([[[1.0, 0.0], [3.0, 2.0]], [[5.0, 5.0], [7.0, 7.0]]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert torch.equal(masked_mean(x, mask), torch.tensor([[2.0, 1.0], [0.0, 0.0]]))


def test_fuse_mean_by_hand_and_missing_image_gives_text() -> None:
    text = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    image = torch.tensor([[0.0, 5.0], [7.0, 0.0]])
    fused = fuse_mean(text, image, torch.tensor([True, False]))
    r = 2**-0.5
    assert torch.allclose(fused, torch.tensor([[r, r], [0.0, 1.0]]))


def test_concat_proj_at_half_identity_equals_mean_and_bias_moves_it() -> None:
    gen = torch.Generator().manual_seed(0)
    text, image = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    has = torch.tensor([True, False, True, True, False])
    weight = torch.cat([torch.eye(4), torch.eye(4)], dim=1) / 2
    proj = fuse_concat_proj(text, image, has, weight, torch.zeros(4))
    assert torch.allclose(proj, fuse_mean(text, image, has), atol=1e-6)
    moved = fuse_concat_proj(text, image, has, weight, torch.ones(4))
    assert not torch.allclose(moved, proj, atol=1e-3)
    assert torch.allclose(moved.norm(dim=1), torch.ones(5))


def test_byte_tokenizer_maps_each_byte_to_one_token_and_keeps_specials_whole() -> None:
    tok = byte_level_tokenizer(["<pad>", "<img>"], pad_token="<pad>")
    text = "héllo\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert all(i < BYTE_VOCAB for i in ids)
    assert tok.decode(ids) == text
    assert tok("a<img>b")["input_ids"][1] == BYTE_VOCAB + 1
    assert tok.pad_token_id == BYTE_VOCAB


def test_byte_tokenizer_wraps_with_bos_eos_and_rejects_unknown_roles() -> None:
    tok = byte_level_tokenizer(
        ["<s>", "</s>", "<pad>"],
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        add_bos_eos=True,
    )
    ids = tok("ab")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 4
    with pytest.raises(ValueError, match="not in special_tokens"):
        byte_level_tokenizer(["<pad>"], pad_token="<pad>", eos_token="</s>")


def test_check_template_names_the_key() -> None:
    check_template("{image}Title: {title}", ("image", "title", "text"), "embedder.item_prompt")
    with pytest.raises(ValueError, match=r"embedder.item_prompt: unknown placeholders \['brand'\]"):
        check_template("{brand}", ("image", "title", "text"), "embedder.item_prompt")


def test_text_clipper_budgets_title_first_and_history_keeps_the_tail() -> None:
    tok = byte_level_tokenizer(["<pad>"], pad_token="<pad>")
    cat = Catalogue(("", "abcdef", "xy"), (None, "0123456789", None), (None, None, None))
    clip = TextClipper(cat, tok, 8)
    assert clip.fields(1) == ("abcdef", "01")
    assert clip.fields(2) == ("xy", "")
    assert clip.history([1, 2]) == "f: 01\nxy"  # "abcdef: 01\nxy" cut to its last 8 tokens


def _processors() -> list[object]:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return [
        Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112),
        CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}),
        SiglipImageProcessorPil(size={"height": 20, "width": 20}),
    ]


@pytest.mark.parametrize("processor", _processors(), ids=["qwen2vl", "clip", "siglip"])
def test_image_cache_equals_the_processor_exactly_and_stores_uint8(processor: Any) -> None:
    rng = np.random.default_rng(0)
    blobs: list[bytes] = []
    for h, w in ((16, 16), (70, 41), (33, 90)):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    cache = ImageCache([None, *blobs], processor)
    for i in (1, 2, 3):
        expected = processor(images=[decode_image(blobs[i - 1], i)], return_tensors="pt")
        got = cache.get(i)
        assert torch.equal(
            got["pixel_values"],
            expected["pixel_values"].squeeze(0)
            if "image_grid_thw" not in expected
            else expected["pixel_values"],
        )
        if "image_grid_thw" in expected:
            assert torch.equal(got["image_grid_thw"], expected["image_grid_thw"][0])
        assert cache.get(i)["pixel_values"] is not got["pixel_values"]  # fresh tensor per read
    numel = sum(cache.get(i)["pixel_values"].numel() for i in (1, 2, 3))
    # one byte per value; Qwen2-VL's two identical temporal copies are stored once
    assert cache.cached_bytes() == (numel // 2 if "image_grid_thw" in expected else numel)


def test_image_cache_processes_each_item_once_and_names_bad_rows() -> None:
    calls: list[int] = []

    class Processor:
        do_rescale, do_normalize = False, False

        def __call__(self, images: list[Image.Image], **kwargs: object) -> dict[str, torch.Tensor]:
            calls.append(1)
            return {"pixel_values": torch.ones(1, 3, *images[0].size)}

    cache = ImageCache([None, _png((255, 0, 0)), None, b"not an image"], Processor())
    assert cache.has_image(1) and not cache.has_image(2)
    assert cache.get(1)["pixel_values"].shape == (3, 16, 16)
    assert torch.equal(cache.get(1)["pixel_values"], torch.ones(3, 16, 16))
    assert len(calls) == 1 and len(cache) == 1
    with pytest.raises(KeyError, match="item_id=2"):
        cache.get(2)
    with pytest.raises(ValueError, match="item_id=3"):
        cache.get(3)
    assert decode_image(_png((0, 0, 255)), 1).getpixel((0, 0)) == (0, 0, 255)
