"""``bench/random_qwen2vl.py`` and ``bench/gpu.sh``: the random Qwen2-VL and Qwen2.5-VL checkpoints
load and train through ``embedder.name = <folder>``, the 2b and 2.5-3b presets have the published
sizes, and the GPU script runs end to end on CPU (``--cpu-check``).

The benchmark scripts live in ``bench/`` (a folder of scripts, not a package), so they are loaded
from their files under private module names, as in ``test_bench_smoke.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_scripts import load

from vlm2rec.config import SyntheticConfig, from_dict
from vlm2rec.data.loader import train_loader
from vlm2rec.data.schema import PreparedDataset
from vlm2rec.distributed import DistInfo
from vlm2rec.embedder.hub import load_pretrained
from vlm2rec.train import _loss_parts, build_run

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


rq = load("random_qwen2vl")


def test_2b_preset_has_the_published_size() -> None:
    n = rq.count_params("2b")  # meta device: no memory
    assert 2.0e9 <= n <= 2.4e9, n
    cfg = rq.model_config("2b")
    assert cfg.model_type == "qwen2_vl"
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (1536, 28, 8960)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (12, 2, 151936)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24] and cfg.tie_word_embeddings
    assert (vision.depth, vision.embed_dim, vision.hidden_size, vision.num_heads) == (
        32,
        1280,
        1536,
        16,
    )
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)


def test_2_5_3b_preset_has_the_published_size() -> None:
    n = rq.count_params("2.5-3b")  # meta device: no memory
    assert 3.6e9 <= n <= 3.9e9, n  # the model card's 3.75 B
    cfg = rq.model_config("2.5-3b")
    assert cfg.model_type == "qwen2_5_vl" and cfg.tie_word_embeddings
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (2048, 36, 11008)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (16, 2, 151936)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (
        32,
        1280,
        3420,
        16,
    )
    assert vision.out_hidden_size == text.hidden_size  # the merger feeds the decoder
    assert (vision.window_size, list(vision.fullatt_block_indexes)) == (112, [7, 15, 23, 31])
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)


def test_build_is_seeded() -> None:
    def weights(seed: int) -> torch.Tensor:
        model = rq.build("test", seed=seed, dtype="fp32").model
        return model.model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()

    state = torch.get_rng_state()
    a, b, c = weights(0), weights(0), weights(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


@pytest.mark.parametrize(
    ("preset", "model_type", "fusion"),
    [("test", "qwen2_vl", "joint"), ("2.5-test", "qwen2_5_vl", "external")],
)
def test_test_preset_loads_and_trains_with_lora(
    preset: str,
    model_type: str,
    fusion: str,
    tmp_path: Path,
    tiny_dataset: PreparedDataset,
    tiny_synthetic_config: SyntheticConfig,
) -> None:
    folder = tmp_path / f"{preset}-random"
    record = rq.write(preset, folder, seed=0, dtype="fp32", device="cpu")
    assert json.loads((folder / "random_init.json").read_text()) == record
    assert record["params"] == rq.count_params(preset) and record["family"] == model_type
    loaded = load_pretrained(str(folder), dtype=torch.float32)
    assert loaded.family == "decoder" and loaded.model.config.text_config.hidden_size == 64
    assert loaded.model.config.model_type == model_type
    assert loaded.tokenizer.convert_ids_to_tokens(loaded.model.config.image_token_id) == (
        "<|image_pad|>"
    )

    cfg = from_dict(
        {
            "data": {
                "path": str(tiny_dataset.path),
                "prepare_if_missing": False,
                "synthetic": dataclasses.asdict(tiny_synthetic_config),
            },
            "embedder": {
                "name": str(folder),
                "fusion": fusion,
                "finetune": "lora",
                "dtype": "fp32",
                "max_text_tokens": 32,
                "gradient_checkpointing": True,
            },
            "train": {"device": "cpu", "batch_size": 8},
        }
    )
    run = build_run(cfg, DistInfo())
    trainable = {n: p for n, p in run.embedder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    batch = next(iter(train_loader(run.splits.train, 8, 0, 1, cfg.seed)))
    u, _ = run.embedder(batch.histories, batch.targets)  # [B, D], {view: [B, D]}
    assert u.shape == (8, 64)
    loss = _loss_parts(run.embedder, batch, cfg.loss)["loss"]  # the training loop's loss
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    opt = torch.optim.AdamW(list(trainable.values()), lr=1e-2)
    opt.step()
    changed = [n for n, p in trainable.items() if not torch.equal(p.detach(), before[n])]
    assert changed  # LoRA B starts at zero, so at least the B matrices moved


def _gpu_sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=600,
    )


def test_gpu_sh_rejects_unknown_arguments() -> None:
    proc = _gpu_sh("--nope")
    assert proc.returncode == 2 and "unknown argument --nope" in proc.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine would run it all")
def test_gpu_sh_without_a_gpu_says_so() -> None:
    proc = _gpu_sh()
    assert proc.returncode == 1 and "nvidia-smi not found" in proc.stderr


@pytest.mark.slow
def test_gpu_sh_cpu_check_runs_end_to_end(tmp_path: Path) -> None:
    proc = _gpu_sh("--cpu-check", env={"OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = ("1 random", "2 synthetic", "3 smoke training", "4 bench/step.py", "5 bench/eval")
    for stage in (*stages, "6 random Qwen2.5-VL", "7 bench/step.py Qwen2.5-VL"):
        assert f"==== {stage}" in proc.stdout
    smoke = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert smoke["mode"] == "cpu-check" and smoke["workers"] == 1
    assert smoke["headline"]["unit"] == "s" and smoke["headline"]["value"] > 0
    assert smoke["model"]["preset"] == "test"
    # every time is rounded to 0.1 s, so the total may fall short of the sum by rounding alone
    assert len(smoke["stages_s"]) == 7
    assert smoke["total_s"] >= sum(smoke["stages_s"].values()) - 0.5
    (epoch,) = smoke["train_losses"]
    assert math.isfinite(epoch["train/loss"])
    assert 0 <= smoke["test"]["test/ndcg@10"] <= 1 and smoke["best_epoch"] == 1
    step = json.loads((tmp_path / "step_fp32.json").read_text())
    assert step["settings"]["device"] == "cpu" and "qwen2vl-test-random" in step["results"]
    evaluation = json.loads((tmp_path / "eval_fp32.json").read_text())
    assert evaluation["settings"]["dtype"] == "fp32"
    step25 = json.loads((tmp_path / "step_qwen2.5vl_fp32.json").read_text())
    assert "embedder.fusion=external" in step25["settings"]["overrides"]
    (result,) = step25["results"].values()
    assert result["trainable_params"] > 0 and math.isfinite(
        result["variants"]["vlm2rec"]["first_loss"]
    )
    assert smoke["model_qwen2.5vl"]["preset"] == "2.5-test"
    assert smoke["model_qwen2.5vl"]["family"] == "qwen2_5_vl"
