"""Embedder backends on the tiny offline models (the three decoder families and the two dual
encoders): views, padding, processor equality, LoRA wiring, a training step, save round-trip,
determinism, gradients, sequences, external fusion, fusion checks and the catalogue pass."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vlm2rec.config import ConfigError, EmbedderConfig, LossConfig
from vlm2rec.data.catalogue import Catalogue
from vlm2rec.data.loader import SequenceBatch
from vlm2rec.distributed import DistInfo
from vlm2rec.embedder import (
    VIEWS,
    DecoderEmbedder,
    DualEmbedder,
    Embedder,
    EmbedderLoadError,
    build_embedder,
)
from vlm2rec.embedder.lora import unwrap
from vlm2rec.embedder.pooling import l2_normalise
from vlm2rec.model_eval import embed_catalogue
from vlm2rec.train import _loss_parts

DECODERS = ["tiny-qwen2vl", "tiny-qwen2.5vl", "tiny-qwen3vl"]
BACKENDS = [*DECODERS, "tiny-clip", "tiny-siglip"]
NO_IMAGE, NO_TEXT = 3, 5  # item 3 has no image, item 5 no text


def _png(seed: int, side: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _catalogue(
    texts: dict[int, str | None] | None = None, images: dict[int, bytes | None] | None = None
) -> Catalogue:
    """Six items: item 3 without image, item 5 without text; ``texts``/``images`` replace entries."""
    titles = ("", "red ball", "blue cube", "green cone", "tall lamp", "soft chair", "old map")
    text: list[str | None] = [
        None,
        "Brand: Acme. Round.",
        "Brand: Zeta.",
        "Brand: Acme.",
        "Made of brass.",
        None,
        "Paper, folded twice.",
    ]
    image: list[bytes | None] = [None, *[_png(i) for i in range(1, 7)]]
    image[NO_IMAGE] = None
    for i, t in (texts or {}).items():
        text[i] = t
    for i, b in (images or {}).items():
        image[i] = b
    return Catalogue(titles, tuple(text), tuple(image))


def _build(name: str, catalogue: Catalogue | None = None, seed: int = 0, **cfg: Any) -> Embedder:
    torch.manual_seed(1234)  # builds must not depend on (or disturb) the global RNG
    return build_embedder(EmbedderConfig(name=name, **cfg), catalogue or _catalogue(), seed=seed)


def _ids(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", BACKENDS)
def test_views_react_only_to_their_own_modality(name: str) -> None:
    ids = _ids(1, 2, 4)
    base = _build(name)
    new_text = _build(name, _catalogue(texts={1: "Brand: Other. Square and heavy."}))
    new_image = _build(name, _catalogue(images={1: _png(99)}))
    with torch.no_grad():
        ref: dict[str, torch.Tensor] = {v: base.encode_items(ids, v) for v in VIEWS}
        by_text: dict[str, torch.Tensor] = {v: new_text.encode_items(ids, v) for v in VIEWS}
        by_image: dict[str, torch.Tensor] = {v: new_image.encode_items(ids, v) for v in VIEWS}
    for view, changed in (("text", by_text), ("image", by_image)):
        other = "image" if view == "text" else "text"
        for v in (view, "both"):
            assert not torch.allclose(changed[v][0], ref[v][0], atol=1e-4), (view, v)
            assert torch.allclose(changed[v][1:], ref[v][1:], atol=1e-5), (view, v)
        assert torch.allclose(changed[other], ref[other], atol=1e-5), (view, other)


@pytest.mark.parametrize("name", BACKENDS)
def test_missing_image_gives_zero_image_row_and_text_only_both(name: str) -> None:
    emb = _build(name)
    with torch.no_grad():
        image = emb.encode_items(_ids(NO_IMAGE, 1), "image")
        both = emb.encode_items(_ids(NO_IMAGE, 1), "both")
        text = emb.encode_items(_ids(NO_IMAGE, 1), "text")
        no_text = emb.encode_items(_ids(NO_TEXT), "both")
    assert torch.equal(image[0], torch.zeros(emb.dim))
    assert torch.allclose(image[1].norm(), torch.tensor(1.0))
    assert torch.allclose(both[0], text[0], atol=1e-5)
    assert not torch.allclose(both[1], text[1], atol=1e-3)
    assert torch.isfinite(no_text).all() and torch.allclose(no_text.norm(), torch.tensor(1.0))


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_left_and_right_padding_give_the_same_embedding(name: str) -> None:
    emb = _build(name)
    assert isinstance(emb, DecoderEmbedder)
    prompts, images = [], []
    for item, view in ((1, "both"), (4, "text"), (2, "image"), (6, "both")):
        prompt, imgs = emb.item_prompt(item, view)  # type: ignore[arg-type]
        prompts.append(prompt)
        images += imgs
    with torch.no_grad():
        left = emb.encode_prompts(prompts, images, padding_side="left")
        right = emb.encode_prompts(prompts, images, padding_side="right")
        alone = emb.encode_prompts(prompts[1:2], [])
    lengths = emb.model_inputs(prompts, images)["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # the batch really needs padding
    assert torch.allclose(left, right, atol=1e-5)
    assert torch.allclose(left[1], alone[0], atol=1e-5)  # no dependence on batch neighbours


def _family_processor(name: str, image_processor: Any, tokenizer: Any) -> Any:
    """The family's own processor (``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor`` or
    ``Qwen3VLProcessor``) without its video processor, which needs torchvision."""
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin

    cls = {
        "tiny-qwen2vl": Qwen2VLProcessor,
        "tiny-qwen2.5vl": Qwen2_5_VLProcessor,
        "tiny-qwen3vl": Qwen3VLProcessor,
    }[name]

    class ImageTextProcessor(cls):  # type: ignore[valid-type,misc]
        # ProcessorMixin reads its parts from this signature: image processor and tokenizer only
        def __init__(self, image_processor: Any, tokenizer: Any) -> None:
            # what the families' __init__ read from the tokenizer (Qwen3-VL: the brackets too)
            for attr, token in (
                ("image_token", "<|image_pad|>"),
                ("video_token", "<|video_pad|>"),
                ("vision_start_token", "<|vision_start|>"),
                ("vision_end_token", "<|vision_end|>"),
            ):
                setattr(self, attr, token)
                setattr(self, f"{attr}_id", tokenizer.convert_tokens_to_ids(token))
            ProcessorMixin.__init__(self, image_processor, tokenizer)

    return ImageTextProcessor(image_processor, tokenizer)


@pytest.mark.parametrize(
    ("name", "factor"), [("tiny-qwen2vl", 28), ("tiny-qwen2.5vl", 28), ("tiny-qwen3vl", 32)]
)
def test_decoder_inputs_equal_the_family_processor(name: str, factor: int) -> None:
    catalogue = _catalogue(images={2: _png(7, side=90), 4: _png(8, side=33)})  # two grid sizes
    cap = (3 * factor) ** 2  # a 3 x 3 grid of merged patches at most
    emb = _build(name, catalogue, max_pixels=cap)
    assert isinstance(emb, DecoderEmbedder)
    processor = _family_processor(name, emb.image_processor, emb.tokenizer)
    one_pad = "<|vision_start|><|image_pad|><|vision_end|>"
    prompts = [
        f"{one_pad}Title: red ball",
        "text only, longer than the others",
        f"a {one_pad}b{one_pad}",
    ]
    items = [1, 2, 4]  # the images in prompt order
    pil = [Image.open(io.BytesIO(catalogue.images[i])).convert("RGB") for i in items]  # type: ignore[arg-type]
    shortest = emb.image_processor.size["shortest_edge"]
    expected = processor(
        text=prompts,
        images=pil,
        return_tensors="pt",
        padding=True,
        size={"shortest_edge": shortest, "longest_edge": cap},
    )
    ours_prompts, queue = [], iter(items)
    for prompt in prompts:  # our side: each placeholder already expanded from the cached grid
        while one_pad in prompt:
            prompt = prompt.replace(one_pad, emb.image_placeholder(next(queue)), 1)
        ours_prompts.append(prompt)
    ours = emb.model_inputs(ours_prompts, items)
    assert set(expected) == set(ours)
    for key in ours:
        assert torch.equal(ours[key], expected[key].to(ours[key].dtype)), key
    assert len({tuple(g) for g in ours["image_grid_thw"].tolist()}) > 1
    assert ours["pixel_values"].shape[1] == 3 * 2 * (factor // 2) ** 2  # C x T x patch x patch


@pytest.mark.parametrize("name", DECODERS)
def test_cached_vision_features_equal_the_models_own_vision_pass(name: str) -> None:
    # Frozen vision: prompts read the per-item cache (Qwen3-VL's deepstack levels included)
    # instead of running the tower; the model's own pass over pixel_values must agree.
    emb = _build(name)
    assert isinstance(emb, DecoderEmbedder) and emb.vision_frozen
    prompts, images = [], []
    for item, view in ((1, "both"), (2, "image"), (4, "text")):
        prompt, imgs = emb.item_prompt(item, view)  # type: ignore[arg-type]
        prompts.append(prompt)
        images += imgs
    prompts.append(emb.sequence_prompt([1, 2, 4])[0])
    images += emb.sequence_prompt([1, 2, 4])[1]
    with torch.no_grad():
        cached = emb.encode_prompts(prompts, images)
        emb.vision_frozen = False  # the model runs its vision tower on the pixels
        direct = emb.encode_prompts(prompts, images)
    assert torch.allclose(cached, direct, atol=1e-5)
    features = emb.image_features([1])[0]
    assert len(features) == (3 if name == "tiny-qwen3vl" else 1)  # merged + 2 deepstack levels
    assert all(f.shape == (4, emb.dim) for f in features)  # 4 merged patches per tiny image


# rank 4 x (in + out) per adapted projection; hidden 64, k/v project to 2 kv heads x 16 (all three
# decoder families: Qwen3-VL's explicit head_dim is 16 too)
QWEN_LAYER = 4 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64))  # q, k, v, o
DUAL_LAYER = 4 * 3 * (64 + 64)  # q, k, v (CLIP/SigLIP call the output projection out_proj)


@pytest.mark.parametrize(
    ("name", "tensors", "numel"),
    [
        ("tiny-qwen2vl", 2 * 4 * 2, 2 * QWEN_LAYER),
        ("tiny-qwen2.5vl", 2 * 4 * 2, 2 * QWEN_LAYER),
        ("tiny-qwen3vl", 2 * 4 * 2, 2 * QWEN_LAYER),
        ("tiny-clip", 2 * 3 * 2, 2 * DUAL_LAYER),
        ("tiny-siglip", 2 * 3 * 2, 2 * DUAL_LAYER),
    ],
)
def test_lora_trains_only_language_adapters(name: str, tensors: int, numel: int) -> None:
    emb = _build(name, finetune="lora", lora_rank=4)
    trainable = {n: p for n, p in emb.named_parameters() if p.requires_grad}
    assert len(trainable) == tensors  # layers x adapted modules x (A, B)
    assert sum(p.numel() for p in trainable.values()) == numel
    assert all("lora_" in n for n in trainable)
    assert not any("visual" in n or "vision" in n for n in trainable)
    if name in DECODERS:  # only the decoder's attention projections, never the vision tower's
        assert all(".language_model.layers." in n and "_proj.lora_" in n for n in trainable)
    frozen = [p for n, p in emb.named_parameters() if "lora_" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert set(emb.trainable_state_dict()) == set(trainable)


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_finetune_modes_and_vision_switch(name: str) -> None:
    full = _build(name, finetune="full")
    names = [n for n, p in full.named_parameters() if p.requires_grad]
    assert names and not any(".visual." in n or "lm_head" in n for n in names)
    assert any(".language_model." in n for n in names)
    unfrozen = _build(name, finetune="lora", freeze_vision=False)
    names = [n for n, p in unfrozen.named_parameters() if p.requires_grad]
    assert any(".visual." in n for n in names) and any("lora_" in n for n in names)
    assert isinstance(unfrozen, DecoderEmbedder) and not unfrozen.vision_frozen
    assert not any(p.requires_grad for p in _build(name, finetune="frozen").parameters())


def test_finetune_modes_of_the_dual_encoders() -> None:
    head = [
        n
        for n, p in _build("tiny-clip", finetune="frozen", fusion="concat_proj").named_parameters()
        if p.requires_grad
    ]
    assert head == ["fusion.weight", "fusion.bias"]
    with pytest.raises(ValueError, match=r"embedder\.lora_target_modules"):
        _build("tiny-clip", lora_target_modules=("no_such_module",))


@pytest.mark.parametrize("name", BACKENDS)
def test_same_seed_same_weights_other_seed_other_weights(name: str) -> None:
    a, b, c = _build(name, seed=3), _build(name, seed=3), _build(name, seed=4)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    lora_a = [k for k in state_a if "lora_A" in k]
    assert lora_a and not all(torch.equal(state_a[k], state_c[k]) for k in lora_a)
    with torch.no_grad():
        assert torch.equal(a.encode_items(_ids(1, 2), "both"), b.encode_items(_ids(1, 2), "both"))


def _perturb_trainables(emb: Embedder) -> None:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in emb.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(
    ("name", "fusion"),
    [
        ("tiny-qwen2vl", "joint"),
        ("tiny-qwen2.5vl", "external"),
        ("tiny-qwen3vl", "joint"),
        ("tiny-qwen3vl", "external"),
        ("tiny-clip", "concat_proj"),
        ("tiny-siglip", "auto"),
    ],
)
def test_save_pretrained_round_trip(name: str, fusion: str, tmp_path: Path) -> None:
    fresh = _build(name, fusion=fusion)
    fresh.save_pretrained(tmp_path / "fresh")
    loaded = _build(str(tmp_path / "fresh"), fusion=fusion)
    assert type(loaded) is type(fresh)
    assert type(unwrap(loaded.backbone)) is type(unwrap(fresh.backbone))  # the family's class
    a, b = fresh.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # exact, LoRA B = 0
    trained = _build(name, fusion=fusion)
    _perturb_trainables(trained)
    trained.save_pretrained(tmp_path / "trained")
    merged = _build(str(tmp_path / "trained"), fusion=fusion)
    with torch.no_grad():
        for view in VIEWS:
            ref, got = (
                trained.encode_items(_ids(1, 2, 3), view),
                merged.encode_items(_ids(1, 2, 3), view),
            )
            assert torch.allclose(ref, got, atol=1e-5), view
        h = torch.tensor([[0, 1, 2], [4, 5, 6]])
        assert torch.allclose(trained.encode_sequences(h), merged.encode_sequences(h), atol=1e-5)


def test_trainable_state_round_trip_is_strict() -> None:
    source, target = _build("tiny-clip", seed=1), _build("tiny-clip", seed=1)  # same base weights
    _perturb_trainables(source)
    with torch.no_grad():
        assert not torch.equal(
            source.encode_items(_ids(1), "text"), target.encode_items(_ids(1), "text")
        )
    target.load_trainable_state_dict(source.trainable_state_dict())
    with torch.no_grad():
        assert torch.equal(
            source.encode_items(_ids(1, 2), "text"), target.encode_items(_ids(1, 2), "text")
        )
    state = source.trainable_state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(KeyError, match="missing keys"):
        target.load_trainable_state_dict(state)


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None
    return p.grad


def _grad_norms(emb: Embedder, loss: torch.Tensor) -> dict[str, float]:
    emb.zero_grad(set_to_none=True)
    loss.backward()
    return {n: float(_grad(p).norm()) for n, p in emb.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", BACKENDS)
def test_both_view_gradients_reach_image_and_text_paths(name: str) -> None:
    emb = _build(name, finetune="lora", freeze_vision=False)
    target = torch.randn(3, emb.dim, generator=torch.Generator().manual_seed(0))
    grads = _grad_norms(emb, (emb.encode_items(_ids(1, 2, 4), "both") * target).sum())
    vision = [g for n, g in grads.items() if "visual" in n or "vision" in n]
    text = [g for n, g in grads.items() if "lora_" in n]
    assert vision and text and min(max(vision), max(text)) > 0
    assert all(g > 0 for n, g in grads.items() if "lora_B" in n)


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_lora_gets_image_dependent_gradients_with_frozen_vision(name: str) -> None:
    # The vision tower has no trainable weights, so the image path reaches training only through
    # the LoRA'd attention over image tokens: the image view (no title/text, identical prompt text)
    # of two items must give different, non-zero LoRA gradients.
    emb = _build(name, finetune="lora", freeze_vision=True)
    target = torch.randn(emb.dim, generator=torch.Generator().manual_seed(0))
    per_item = []
    for item in (1, 2):
        _grad_norms(emb, emb.encode_items(_ids(item), "image")[0] @ target)
        per_item.append(
            torch.cat([_grad(p).flatten() for n, p in emb.named_parameters() if "lora_B" in n])
        )
        assert not any(p.grad is not None for n, p in emb.named_parameters() if ".visual." in n)
    assert per_item[0].norm() > 0 and not torch.allclose(per_item[0], per_item[1], atol=1e-6)


@pytest.mark.parametrize("name", BACKENDS)
def test_sequences_shape_norm_padding_and_recent_images(name: str) -> None:
    emb = _build(name, images_per_history=1)
    histories = torch.tensor(
        [[0, 0, 1, 2], [0, 0, 0, 0], [4, 6, 1, 2], [0, 0, 0, 0], [0, 0, 0, NO_IMAGE]]
    )
    with torch.no_grad():
        seq = emb.encode_sequences(histories)
        older = _build(name, _catalogue(images={1: _png(50)}), images_per_history=1)
        newest = _build(name, _catalogue(images={2: _png(50)}), images_per_history=1)
        seq_older, seq_newest = (
            older.encode_sequences(histories),
            newest.encode_sequences(histories),
        )
    assert seq.shape == (5, emb.dim) and seq.dtype == torch.float32
    assert torch.allclose(seq.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(seq[1], seq[3], atol=1e-6)  # all padding: one fixed vector
    assert torch.allclose(seq_older[0], seq[0], atol=1e-5)  # item 1's image is beyond k = 1
    assert not torch.allclose(seq_newest[0], seq[0], atol=1e-4)  # item 2 is the newest


@pytest.mark.parametrize("name", BACKENDS)
def test_embed_catalogue_shape_and_zero_rows(name: str) -> None:
    emb = _build(name).eval()
    table = embed_catalogue(emb, "image", 4, DistInfo(), emb.device)
    assert table.shape == (7, emb.dim) and table.dtype == torch.float32
    assert torch.equal(table[0], torch.zeros(emb.dim)) and torch.equal(
        table[NO_IMAGE], torch.zeros(emb.dim)
    )
    with torch.no_grad():
        direct = emb.eval().encode_items(_ids(1, 2, 4, 5, 6), "image")
    assert torch.allclose(table[[1, 2, 4, 5, 6]], direct, atol=1e-5)


def test_bad_inputs_are_named() -> None:
    emb = _build("tiny-clip")
    with pytest.raises(ValueError, match=r"item_ids: ids must be in 1..6"):
        emb.encode_items(_ids(0, 7), "text")
    with pytest.raises(ValueError, match="histories"):
        emb.encode_sequences(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"embedder\.sequence_prompt"):
        _build("tiny-qwen2vl", sequence_prompt="{history} {user}")


def test_decoder_truncation_keeps_the_instruction_token() -> None:
    long = _catalogue(texts={1: "word " * 400})
    emb = _build("tiny-qwen2vl", long, max_text_tokens=16)
    assert isinstance(emb, DecoderEmbedder)
    prompt, _ = emb.item_prompt(1, "text")
    assert prompt.endswith("Summarize the item in one word:")
    n_tokens = len(emb.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    template = len(
        emb.tokenizer(emb.cfg.item_prompt.format(image="", title="", text=""))["input_ids"]
    )
    assert n_tokens == template + 16


@pytest.mark.parametrize(
    "name", ["no-such-org/no-such-model-vlm2rec", "/nonexistent/vlm2rec/folder"]
)
def test_unloadable_checkpoint_says_offline_needs_a_local_folder(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub reads the variable once at import: set the parsed flag too, so nothing dials out
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EmbedderLoadError, match="local folder"):
        _build(name)


def test_global_rng_is_untouched_by_builds() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_embedder(EmbedderConfig(name="tiny-siglip"), _catalogue(), seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_dual_is_dual_and_config_is_frozen() -> None:
    emb = _build("tiny-siglip")
    assert isinstance(emb, DualEmbedder) and emb.family == "siglip"
    with pytest.raises(dataclasses.FrozenInstanceError):
        emb.cfg.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize("name", [*DECODERS, "tiny-clip"])
def test_bf16_weights_still_give_float32_normalised_outputs(name: str) -> None:
    full, half = _build(name), _build(name, dtype="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        ref, got = full.encode_items(_ids(1, 2), "both"), half.encode_items(_ids(1, 2), "both")
        table = embed_catalogue(half, "image", 3, DistInfo(), half.device)
    assert got.dtype == torch.float32 and table.dtype == torch.float32
    assert torch.allclose(got.norm(dim=1), torch.ones(2), atol=1e-5)
    assert (ref * got).sum(dim=1).min() > 0.95  # same function up to bf16 rounding


@pytest.mark.parametrize("name", DECODERS)
def test_gradient_checkpointing_gives_the_same_gradients(name: str) -> None:
    plain, ckpt = _build(name), _build(name, gradient_checkpointing=True)
    target = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    grads = []
    for emb in (plain, ckpt):
        emb.train()
        loss = (emb.encode_sequences(torch.tensor([[0, 1, 2], [4, 5, 6]])) * target).sum()
        grads.append(_grad_norms(emb, loss))
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(abs(grads[0][k] - grads[1][k]) <= 1e-5 * (1 + grads[0][k]) for k in grads[0])


@pytest.mark.parametrize("name", DECODERS)
def test_cached_vision_features_do_not_depend_on_which_batch_asked_first(name: str) -> None:
    # Batched vision passes round differently per batch; the cache fills fixed blocks of ids, so
    # an item's features are the same bits in any run (what bit-exact resume relies on).
    a, b = _build(name), _build(name)
    assert isinstance(a, DecoderEmbedder) and isinstance(b, DecoderEmbedder)
    together = a.image_features([1, 2, 4, 5, 6])
    one_by_one = [b.image_features([i])[0] for i in (1, 2, 4, 5, 6)]
    pairs = zip(together, one_by_one, strict=True)
    assert all(torch.equal(x, y) for fa, fb in pairs for x, y in zip(fa, fb, strict=True))
    assert len(a._features) == 5  # the whole block: items 1, 2, 4, 5, 6 (item 3 has no image)


def _batch(histories: list[list[int]], targets: list[int]) -> SequenceBatch:
    h = torch.tensor(histories)
    return SequenceBatch(h, h != 0, torch.tensor(targets), torch.arange(len(targets)))


@pytest.mark.parametrize(
    ("name", "fusion"), [(n, f) for n in DECODERS for f in ("joint", "external")]
)
def test_decoder_training_step_moves_lora_and_changes_the_embedding(name: str, fusion: str) -> None:
    # One step of the training loop's loss (sequence + three views, WPCL + CRTR) and AdamW.
    emb = _build(name, fusion=fusion, lora_rank=4)
    batch = _batch([[0, 1, 2], [2, 4, 5], [0, 0, 6], [1, 3, 4]], [4, 6, 1, 2])
    trainable = {n: p for n, p in emb.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    with torch.no_grad():
        ref = emb.encode_items(_ids(1, 2), "both")
    loss = _loss_parts(emb, batch, LossConfig(gather=False))["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(
        p.grad is not None and p.grad.norm() > 0 for n, p in trainable.items() if "lora_B" in n
    )
    torch.optim.AdamW(list(trainable.values()), lr=1e-2).step()
    moved = [n for n, p in trainable.items() if not torch.equal(p.detach(), before[n])]
    assert any("lora_B" in n for n in moved)
    with torch.no_grad():
        assert not torch.allclose(emb.encode_items(_ids(1, 2), "both"), ref, atol=1e-4)


@pytest.mark.parametrize("name", DECODERS)
def test_external_both_is_the_normalised_sum_of_the_single_views(name: str) -> None:
    emb = _build(name, fusion="external")
    joint = _build(name, fusion="joint")  # same seed: the same weights
    ids = _ids(1, 2, NO_IMAGE, 4, NO_TEXT, 6)
    histories = torch.tensor([[0, 1, 2], [0, 0, 0], [4, 5, 6], [0, 0, NO_IMAGE]])
    with torch.no_grad():
        views = {v: emb.encode_items(ids, v) for v in VIEWS}
        together = emb.encode_views(ids)
        seq = emb.encode_sequences(histories)
        assert isinstance(emb, DecoderEmbedder)
        rows = emb.check_histories(histories)
        text_h = emb.encode_prompts([emb.sequence_prompt(r, "text")[0] for r in rows], [])
        with_images = [r for r in rows if emb.history_images(r)]
        prompts, images = zip(*(emb.sequence_prompt(r, "image") for r in with_images), strict=True)
        image_h = emb.encode_prompts(list(prompts), [i for imgs in images for i in imgs])
        joint_views = {v: joint.encode_items(ids, v) for v in VIEWS}
        joint_seq = joint.encode_sequences(histories)
    expected = l2_normalise(views["text"] + views["image"])
    assert torch.allclose(views["both"], expected, atol=1e-6)
    assert torch.allclose(views["both"][2], views["text"][2], atol=1e-6)  # no image: text only
    assert all(torch.allclose(together[v], views[v], atol=1e-6) for v in VIEWS)
    # the single views are the joint mode's; only the fused view and the sequences differ
    for v in ("text", "image"):
        assert torch.allclose(views[v], joint_views[v], atol=1e-6)
    assert not torch.allclose(views["both"][0], joint_views["both"][0], atol=1e-3)
    # histories 0 and 2 have a recent image; 1 (padding) and 3 (item without image) are text only
    image_rows = torch.zeros_like(text_h)
    image_rows[[0, 2]] = image_h
    assert torch.allclose(seq, l2_normalise(text_h + image_rows), atol=1e-6)
    assert torch.allclose(seq[[1, 3]], text_h[[1, 3]], atol=1e-6)
    assert not torch.allclose(seq[0], joint_seq[0], atol=1e-3)


@pytest.mark.parametrize(("fusion", "passes"), [("joint", 3), ("external", 2)])
def test_training_forward_costs_two_item_passes_under_external_fusion(
    fusion: str, passes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = _build("tiny-qwen3vl", fusion=fusion)
    assert isinstance(emb, DecoderEmbedder)
    calls: list[int] = []
    real = DecoderEmbedder.encode_prompts

    def counted(self: DecoderEmbedder, prompts: list[str], *args: Any, **kw: Any) -> torch.Tensor:
        calls.append(len(prompts))
        return real(self, prompts, *args, **kw)

    monkeypatch.setattr(DecoderEmbedder, "encode_prompts", counted)
    u, v = emb(torch.tensor([[0, 1, 2], [0, 4, 6]]), _ids(1, 2, 4))
    assert set(v) == set(VIEWS) and u.shape == (2, emb.dim)
    sequence_passes = 1 if fusion == "joint" else 2  # external: text and image histories
    assert len(calls) == sequence_passes + passes
    grads = _grad_norms(emb, (v["both"] * torch.ones_like(v["both"])).sum())
    assert any(g > 0 for n, g in grads.items() if "lora_B" in n)  # both reaches LoRA


@pytest.mark.parametrize(
    ("name", "fusion", "expected"),
    [
        ("tiny-qwen2vl", "mean", "auto, joint, external"),
        ("tiny-qwen3vl", "concat_proj", "auto, joint, external"),
        ("tiny-clip", "external", "auto, mean, concat_proj"),
        ("tiny-siglip", "joint", "auto, mean, concat_proj"),
    ],
)
def test_fusion_of_the_other_family_is_a_config_error(
    name: str, fusion: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=r"^embedder\.fusion: ") as err:
        _build(name, fusion=fusion)
    assert expected in str(err.value) and repr(fusion) in str(err.value)


def test_fusion_auto_means_joint_for_decoders_and_mean_for_dual_encoders() -> None:
    auto, joint = _build("tiny-qwen2.5vl"), _build("tiny-qwen2.5vl", fusion="joint")
    assert isinstance(auto, DecoderEmbedder) and auto.fusion == "joint"
    dual_auto, dual_mean = _build("tiny-clip"), _build("tiny-clip", fusion="mean")
    assert isinstance(dual_auto, DualEmbedder) and dual_auto.fusion is None  # no learned head
    with torch.no_grad():
        assert torch.equal(
            auto.encode_items(_ids(1, 2), "both"), joint.encode_items(_ids(1, 2), "both")
        )
        assert torch.equal(
            dual_auto.encode_items(_ids(1, 2), "both"), dual_mean.encode_items(_ids(1, 2), "both")
        )
