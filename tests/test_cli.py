"""The single-run CLI end to end: train (run folder contents), --resume, evaluate, export, and
clean exit-2 errors for bad overrides. Runs the shipped base config shrunk by ``--set``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from metric_keys import split_keys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vlm2rec.cli import console
from vlm2rec.config import SyntheticConfig, from_dict, load_config, parse_override, to_dict
from vlm2rec.data.schema import PreparedDataset

BASE = Path(__file__).resolve().parents[1] / "search_spaces" / "base" / "synthetic.toml"
EPOCHS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sets(data: Path, synthetic: SyntheticConfig) -> list[str]:
    """--set flags turning the default run into a seconds-long one on the copied fixture."""
    flags = {
        "data.path": json.dumps(str(data)),  # quoted: a TOML string
        "data.prepare_if_missing": "false",
        "embedder.name": "tiny-clip",
        "train.epochs": str(EPOCHS),
        "train.batch_size": "16",
        "train.device": "cpu",
    }
    flags |= {f"data.synthetic.{k}": json.dumps(v) for k, v in to_dict(synthetic).items()}
    return [a for k, v in flags.items() for a in ("--set", f"{k}={v}")]


def _train_args(data: Path, synthetic: SyntheticConfig, out: Path) -> list[str]:
    return ["train", "--config", str(BASE), "--out", str(out), *_sets(data, synthetic)]


@pytest.fixture(scope="module")
def data_path(tiny_dataset: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("cli_data") / "ds"
    shutil.copytree(tiny_dataset.path, dst)
    return dst


@pytest.fixture(scope="module")
def run_dir(
    data_path: Path,
    tiny_synthetic_config: SyntheticConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    out = tmp_path_factory.mktemp("cli_run") / "run"
    assert console(_train_args(data_path, tiny_synthetic_config, out)) == 0
    return out


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _no_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_train_writes_config_metrics_and_final(
    run_dir: Path, data_path: Path, tiny_synthetic_config: SyntheticConfig
) -> None:
    sets = _sets(data_path, tiny_synthetic_config)
    expected = load_config(BASE, dict(parse_override(s) for s in sets[1::2]))
    config = json.loads((run_dir / "config.json").read_text())
    assert from_dict(config) == expected and config["embedder"]["name"] == "tiny-clip"
    rows = _rows(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert all(split_keys("val") <= set(r) and "train/loss" in r for r in rows)
    assert split_keys("test") <= set(rows[-1])
    final = json.loads((run_dir / "final.json").read_text())
    assert final["metric"] == "val/ndcg@10" and final["config"] == config
    best = final["best_epoch"]
    assert best == 1 + int(np.argmax([r["val/ndcg@10"] for r in rows]))
    assert final["best_metric"] == rows[best - 1]["val/ndcg@10"]
    assert final["val"] == {k: v for k, v in rows[best - 1].items() if k.startswith("val/")}
    assert final["test"] == {k: v for k, v in rows[-1].items() if k.startswith("test/")}
    assert set(final["test"]) == split_keys("test") and len(final["config_hash"]) == 12


def test_train_writes_tensorboard_with_exact_tags(run_dir: Path) -> None:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val/ndcg@10", "val/ndcg@10/image", "train/loss", "test/ndcg@10"} <= tags
    assert not any("_10" in t for t in tags)  # '@' kept, never rewritten
    rows = _rows(run_dir / "metrics.jsonl")
    events = acc.Scalars("val/ndcg@10")
    assert [e.step for e in events] == list(range(1, EPOCHS + 1))
    assert [e.value for e in events] == pytest.approx([r["val/ndcg@10"] for r in rows])


def test_train_keeps_newest_checkpoints(run_dir: Path) -> None:
    folders = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert folders == ["epoch_0002", "epoch_0003"]  # base config keeps 2
    files = {p.name for p in (run_dir / "checkpoints" / "epoch_0003").iterdir()}
    assert files == {"trainable.safetensors", "best.safetensors", "state.pt", "progress.json"}


@pytest.mark.slow
def test_resume_after_losing_last_epoch_gives_same_result(
    run_dir: Path,
    data_path: Path,
    tiny_synthetic_config: SyntheticConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / f"epoch_{EPOCHS:04d}")  # killed before the last epoch
    args = [*_train_args(data_path, tiny_synthetic_config, copy), "--resume"]
    assert console(args) == 0
    assert "starting fresh" not in capsys.readouterr().err
    before = json.loads((run_dir / "final.json").read_text())
    after = json.loads((copy / "final.json").read_text())
    assert after == before
    rows = _rows(copy / "metrics.jsonl")  # rebuilt from the checkpoint, then the resumed epoch
    assert _no_time(rows) == _no_time(_rows(run_dir / "metrics.jsonl"))


def test_resume_with_a_different_config_names_the_keys_and_exits_2(
    run_dir: Path,
    data_path: Path,
    tiny_synthetic_config: SyntheticConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    args = [*_train_args(data_path, tiny_synthetic_config, copy), "--resume"]
    args += ["--set", "loss.alpha=0.75", "--set", "train.batch_size=8"]
    assert console(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --resume: ")
    assert str(copy / "config.json") in err[0]
    assert "loss.alpha (" in err[0] and "-> 0.75)" in err[0] and "train.batch_size (" in err[0]
    assert "loss.beta" not in err[0]  # only the keys that differ
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before  # untouched


def test_ranking_reproduces_final_test_metrics(run_dir: Path) -> None:
    assert console(["evaluate", "--run", str(run_dir), "--split", "test"]) == 0
    again = json.loads((run_dir / "eval_test.json").read_text())
    final = json.loads((run_dir / "final.json").read_text())["test"]
    assert again["test/ndcg@10"] == pytest.approx(final["test/ndcg@10"], abs=1e-9)
    assert again == pytest.approx(final, abs=1e-9)


def test_export_writes_item_embeddings(
    run_dir: Path, tiny_synthetic_config: SyntheticConfig, tmp_path: Path
) -> None:
    out = tmp_path / "items.parquet"
    assert console(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    table = pq.read_table(out)
    n = tiny_synthetic_config.items
    assert table.column_names == ["item_id", "embedding_both", "embedding_text", "embedding_image"]
    assert table.schema.field("item_id").type == pa.int64()
    assert table.column("item_id").to_pylist() == list(range(1, n + 1))
    dims = set()
    views = {}
    for view in ("both", "text", "image"):
        typ = table.schema.field(f"embedding_{view}").type
        assert pa.types.is_fixed_size_list(typ) and typ.value_type == pa.float32()
        dims.add(typ.list_size)
        views[view] = np.stack(table.column(f"embedding_{view}").to_numpy(zero_copy_only=False))
        assert views[view].shape == (n, typ.list_size)
        np.testing.assert_allclose(np.linalg.norm(views[view], axis=1), 1.0, rtol=1e-5)
    assert len(dims) == 1 and dims.pop() > 1
    assert not np.allclose(views["both"], views["text"])  # three different views, not one copy


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("loss.alhpa=0.5", "loss.alhpa"),
        ("train.epochs=many", "train.epochs"),
        ("embedder.lora_rank", "embedder.lora_rank"),
    ],
)
def test_bad_override_exits_2_naming_the_key(
    override: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = console(["train", "--config", str(BASE), "--out", str(tmp_path), "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and named in err and err.count("\n") == 1
    assert not (tmp_path / "config.json").exists()  # rejected before anything is written


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert console(["train", "--config", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
