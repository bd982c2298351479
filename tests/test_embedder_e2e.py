"""The new decoder families through the whole single-run CLI: ``train`` (with validation and the
test pass of the best checkpoint), ``evaluate`` and ``export``, one family per fusion mode.

``test_cli.py`` runs the same commands on ``tiny-clip``; here the point is that ``tiny-qwen2.5vl``
and ``tiny-qwen3vl`` (with LoRA, as a real checkpoint would train) work end to end, and that an
exported ``external`` item table keeps the fused view equal to the normalised sum of the single
views it was built from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vlm2rec.cli import console
from vlm2rec.config import SyntheticConfig, to_dict
from vlm2rec.data.schema import PreparedDataset

BASE = Path(__file__).resolve().parents[1] / "search_spaces" / "base" / "synthetic.toml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_path(tiny_dataset: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("e2e_data") / "ds"
    shutil.copytree(tiny_dataset.path, dst)
    return dst


def _sets(data: Path, synthetic: SyntheticConfig, name: str, fusion: str) -> list[str]:
    flags = {
        "data.path": json.dumps(str(data)),
        "data.prepare_if_missing": "false",
        "embedder.name": name,
        "embedder.fusion": fusion,
        "embedder.finetune": "lora",
        "embedder.lora_rank": "4",
        "train.epochs": "1",
        "train.batch_size": "16",
        "train.device": "cpu",
    }
    flags |= {f"data.synthetic.{k}": json.dumps(v) for k, v in to_dict(synthetic).items()}
    return [a for k, v in flags.items() for a in ("--set", f"{k}={v}")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "fusion"), [("tiny-qwen2.5vl", "joint"), ("tiny-qwen3vl", "external")]
)
def test_new_decoder_trains_evaluates_and_exports(
    name: str,
    fusion: str,
    data_path: Path,
    tiny_synthetic_config: SyntheticConfig,
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    args = ["train", "--config", str(BASE), "--out", str(run)]
    assert console([*args, *_sets(data_path, tiny_synthetic_config, name, fusion)]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["config"]["embedder"]["name"] == name
    assert final["config"]["embedder"]["fusion"] == fusion
    assert final["best_epoch"] == 1 and 0.0 <= final["test"]["test/ndcg@10"] <= 1.0
    assert np.isfinite(
        json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train/loss"]
    )

    assert console(["evaluate", "--run", str(run), "--split", "test"]) == 0
    again = json.loads((run / "eval_test.json").read_text())
    # the same weights give the same numbers (the frozen vision-feature cache is filled per fixed
    # block of items, so a fresh process computes the very same features as training did)
    assert again == pytest.approx(final["test"], abs=1e-9)

    out = tmp_path / "items.parquet"
    assert console(["export", "--run", str(run), "--out", str(out)]) == 0
    table = pq.read_table(out)
    views = {
        v: np.stack(table.column(f"embedding_{v}").to_numpy(zero_copy_only=False))
        for v in ("both", "text", "image")
    }
    assert views["both"].shape == (tiny_synthetic_config.items, 64)
    np.testing.assert_allclose(np.linalg.norm(views["both"], axis=1), 1.0, rtol=1e-5)
    fused = views["text"] + views["image"]
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    if fusion == "external":
        np.testing.assert_allclose(views["both"], fused, atol=1e-5)
    else:  # joint: one prompt with image and text, not the sum of the two single-view prompts
        assert not np.allclose(views["both"], fused, atol=1e-3)
