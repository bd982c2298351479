"""fit(): history keys, learning, exact resume, non-finite loss, early stopping, evaluation cadence,
and a 2-process gloo run (tiny offline models on the shared 60-user fixture)."""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from metric_keys import split_keys

import vlm2rec.train as train_mod
from vlm2rec.checkpoint import load_checkpoint
from vlm2rec.config import RunConfig, SyntheticConfig, apply_overrides, to_dict
from vlm2rec.data.schema import PreparedDataset
from vlm2rec.distributed import DistInfo
from vlm2rec.metric_names import reported_metrics
from vlm2rec.model_eval import evaluate_model
from vlm2rec.train import FitResult, NonFiniteLossError, build_run, eval_split, fit, lr_factor

KS = (5, 10, 20)
#: docs/ARCHITECTURE.md "One name per number": every epoch that validates reports exactly these
#: (plus bookkeeping).
TRAIN_KEYS = {
    "train/loss",
    "train/cl_loss",
    "train/wpcl_loss",
    "train/topo_loss",
    "train/loss_text",
    "train/loss_image",
    "train/weak_image_share",
    "train/lr",
}


@pytest.fixture(scope="module")
def data_path(tiny_dataset: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the shared fixture (fit only reads it, but the fixture is read-only)."""
    dst = tmp_path_factory.mktemp("train_data") / "ds"
    shutil.copytree(tiny_dataset.path, dst)
    return dst


def make_cfg(data: Path, synthetic: SyntheticConfig, **overrides: Any) -> RunConfig:
    """A seconds-long run: tiny-clip, full fine-tuning, short prompts, batch 16, 3 epochs, CPU."""
    base: dict[str, Any] = {
        "data.path": str(data),
        "data.prepare_if_missing": False,
        "data.synthetic": to_dict(synthetic),
        "embedder.name": "tiny-clip",
        "embedder.finetune": "full",
        "embedder.item_prompt": "{image}{title} {text}",
        "embedder.sequence_prompt": "{images}{history}",
        "embedder.max_text_tokens": 32,
        "optim.lr": 2e-3,
        "train.epochs": 3,
        "train.batch_size": 16,
        "train.device": "cpu",
    }
    return apply_overrides(RunConfig(), base | overrides)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_run(
    data_path: Path,
    tiny_synthetic_config: SyntheticConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[RunConfig, FitResult]:
    cfg = make_cfg(data_path, tiny_synthetic_config)
    return cfg, fit(cfg, checkpoint_root=tmp_path_factory.mktemp("clip_ckpt"))


def _comparable(row: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def test_fit_reports_the_metric_names_every_epoch(clip_run: tuple[RunConfig, FitResult]) -> None:
    _, res = clip_run
    assert [h["epoch"] for h in res.history] == [1.0, 2.0, 3.0]
    for h in res.history[:-1]:
        assert set(h) == TRAIN_KEYS | split_keys("val") | {"epoch", "time/epoch_s"}
    last = res.history[-1]
    assert set(last) == TRAIN_KEYS | split_keys("val") | split_keys("test") | {
        "epoch",
        "time/epoch_s",
    }
    assert all(np.isfinite(v) for h in res.history for v in h.values())
    assert set(res.test) == split_keys("test")
    assert res.test == {k: v for k, v in last.items() if k.startswith("test/")}


def _per_epoch_metrics(row: Mapping[str, float]) -> set[str]:
    return {k for k in row if k.startswith(("val/", "train/"))}


def test_reported_metrics_are_the_keys_fit_reports(clip_run: tuple[RunConfig, FitResult]) -> None:
    """The preflight's list of metric names (study/plan.py) is what a real run reports."""
    cfg, res = clip_run
    assert all(_per_epoch_metrics(h) == reported_metrics(cfg, synthetic=True) for h in res.history)
    assert {f"test/{k[4:]}" for k in reported_metrics(cfg, True) if k[:4] == "val/"} == set(
        res.test
    )
    not_synthetic = reported_metrics(cfg, synthetic=False)
    assert not_synthetic == {k for k in reported_metrics(cfg, True) if "/oracle/" not in k}


def test_fit_learns_and_best_epoch_is_argmax(clip_run: tuple[RunConfig, FitResult]) -> None:
    cfg, res = clip_run
    losses = [h["train/loss"] for h in res.history]
    assert losses[-1] < losses[0] - 0.1, losses  # learnable: the tiny model fits the benchmark
    values = [h[cfg.eval.metric] for h in res.history]
    assert res.best_epoch == int(np.argmax(values)) + 1
    assert res.best_metric == max(values)
    assert res.best_val == {
        k: v for k, v in res.history[res.best_epoch - 1].items() if k.startswith("val/")
    }
    # The LR follows warm-up + cosine: the logged value is the schedule after each epoch's steps.
    assert res.history[-1]["train/lr"] == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio)


def test_fit_test_metrics_come_from_best_checkpoint(
    clip_run: tuple[RunConfig, FitResult],
) -> None:
    cfg, res = clip_run
    assert res.checkpoint_dir is not None and res.checkpoint_dir.name == "epoch_0003"
    _, best, _, progress = load_checkpoint(res.checkpoint_dir)
    assert progress.best_epoch == res.best_epoch and progress.epoch == 3
    run = build_run(cfg, DistInfo())
    run.embedder.load_trainable_state_dict(best)
    again = evaluate_model(run.embedder, run.splits.test, "test", cfg.eval, DistInfo())
    again |= eval_split(run, run.splits.test, "test").oracles  # reported beside the model's
    assert again == pytest.approx(res.test, abs=1e-6)


def test_lr_factor_warmup_then_cosine_to_floor() -> None:
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.55)  # half-way: mean of 1 and floor
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 10, 0, 0.0) == pytest.approx(1.0)  # no warm-up starts at the peak


class _Interrupt(Exception):
    pass


class _KillAfter:
    """Raises after the report of epoch ``epoch``: the checkpoint of that epoch is already on disk."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def report(self, metrics: Mapping[str, float], step: int, checkpoint_dir: Path | None) -> None:
        if step == self.epoch:
            raise _Interrupt


@pytest.mark.slow
def test_resume_from_epoch_checkpoint_is_exact(
    data_path: Path, tiny_synthetic_config: SyntheticConfig, tmp_path: Path
) -> None:
    # The decoder VLM with LoRA dropout: resume must restore weights, optimiser moments, the LR
    # schedule, the sampler epoch and the dropout RNG stream to match bit for bit.
    cfg = make_cfg(
        data_path,
        tiny_synthetic_config,
        **{
            "embedder.name": "tiny-qwen2vl",
            "embedder.finetune": "lora",
            "embedder.lora_dropout": 0.3,
            "optim.lr": 5e-3,
            "train.batch_size": 32,  # half the steps of the default helper: the test is about state
        },
    )
    straight = fit(cfg, checkpoint_root=tmp_path / "a")
    with pytest.raises(_Interrupt):
        fit(cfg, reporter=_KillAfter(2), checkpoint_root=tmp_path / "b")
    assert not (tmp_path / "b" / "epoch_0003").exists()
    resumed = fit(cfg, resume_from=tmp_path / "b" / "epoch_0002", checkpoint_root=tmp_path / "b")
    assert [_comparable(h) for h in resumed.history] == [_comparable(h) for h in straight.history]
    assert resumed.best_epoch == straight.best_epoch and resumed.test == straight.test
    w_a = load_checkpoint(tmp_path / "a" / "epoch_0003")[0]
    w_b = load_checkpoint(tmp_path / "b" / "epoch_0003")[0]
    assert w_a.keys() == w_b.keys()
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)


def test_non_finite_loss_names_epoch_step_and_parts(
    data_path: Path,
    tiny_synthetic_config: SyntheticConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = train_mod.vlm2rec_loss
    calls = []

    def poisoned(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        parts = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the second micro-step of epoch 1 diverges
            parts["topo_loss"] = parts["topo_loss"] * float("nan")
            parts["loss"] = parts["loss"] + parts["topo_loss"]
        return parts

    monkeypatch.setattr(train_mod, "vlm2rec_loss", poisoned)
    cfg = make_cfg(data_path, tiny_synthetic_config)
    with pytest.raises(NonFiniteLossError) as err:
        fit(cfg, checkpoint_root=tmp_path)
    msg = str(err.value)
    assert "epoch 1" in msg and "step 2" in msg
    for part in ("loss=nan", "cl_loss=", "wpcl_loss=", "topo_loss=nan", "loss_text="):
        assert part in msg
    assert not list(tmp_path.glob("epoch_*"))  # nothing checkpointed from a diverged epoch


def test_early_stopping_stops_and_still_tests(
    data_path: Path, tiny_synthetic_config: SyntheticConfig, tmp_path: Path
) -> None:
    # Maximising the training loss (which falls every epoch, see the learning test) makes every
    # validation after the first a non-improvement: with patience 2 the run must stop at epoch 3.
    cfg = make_cfg(
        data_path,
        tiny_synthetic_config,
        **{
            "train.epochs": 8,
            "train.early_stopping_patience": 2,
            "eval.metric": "train/loss",
            "eval.mode": "max",
        },
    )
    reports: list[dict[str, float]] = []

    class Keep:
        def report(self, m: Mapping[str, float], step: int, ckpt: Path | None) -> None:
            reports.append(dict(m))

    res = fit(cfg, reporter=Keep(), checkpoint_root=tmp_path)
    assert [r["epoch"] for r in reports] == [1.0, 2.0, 3.0]
    assert res.best_epoch == 1
    assert set(res.test) == split_keys("test")
    assert split_keys("test") <= set(reports[-1])
    assert not any(k.startswith("test/") for r in reports[:-1] for k in r)
    assert res.checkpoint_dir is not None and res.checkpoint_dir.name == "epoch_0003"
    # resuming a run that stopped early trains nothing more and hands back the same result
    again = fit(cfg, resume_from=res.checkpoint_dir, checkpoint_root=tmp_path)
    assert again.history == res.history and again.test == res.test
    assert again.checkpoint_dir == res.checkpoint_dir


def test_val_subsample_and_eval_cadence(
    data_path: Path,
    tiny_synthetic_config: SyntheticConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, np.ndarray]] = []
    real = train_mod.evaluate_model

    def spy(embedder: Any, examples: Any, split: str, cfg: Any, dist: DistInfo, neg: Any) -> Any:
        seen.append((split, examples.user_ids.copy()))
        return real(embedder, examples, split, cfg, dist, neg)

    monkeypatch.setattr(train_mod, "evaluate_model", spy)
    cfg = make_cfg(
        data_path,
        tiny_synthetic_config,
        **{"train.epochs": 5, "eval.every_epochs": 2, "eval.val_users": 20},
    )
    res = fit(cfg, checkpoint_root=tmp_path)
    # validation at epochs 2 and 4 (cadence) and 5 (always the last), then one test pass
    assert [s for s, _ in seen] == ["val", "val", "val", "test"]
    validated = [h["epoch"] for h in res.history if "val/ndcg@10" in h]
    assert validated == [2.0, 4.0, 5.0]
    assert all(set(h) >= TRAIN_KEYS for h in res.history)
    splits = build_run(cfg, DistInfo()).splits
    expected = splits.val.subsample(20, cfg.seed).user_ids
    for _split, users in seen[:3]:
        assert len(users) == 20
        np.testing.assert_array_equal(users, expected)
    assert len(seen[3][1]) == len(splits.test) == tiny_synthetic_config.users
    assert res.best_epoch in (2, 4, 5)


# --------------------------------------------------------------------------------------------
# Two gloo processes, launched here as a launcher would (fit never creates the group).

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dist_worker(rank: int, port: int, cfg_dict: dict[str, Any], out: str) -> None:
    """One rank: an uninterrupted run, then the same run killed after epoch 1 and resumed."""
    from vlm2rec.config import from_dict

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # A short collective timeout: if one rank fails, the other errors out instead of hanging.
    tdist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=300),
    )
    try:
        cfg, dist, root = from_dict(cfg_dict), DistInfo(rank, WORLD, rank, "cpu"), Path(out)
        res = fit(cfg, dist, checkpoint_root=root / "ckpt")
        with contextlib.suppress(_Interrupt):  # every rank is killed at the same point
            fit(cfg, dist, _KillAfter(1), checkpoint_root=root / "cut")
        resumed = fit(
            cfg, dist, resume_from=root / "cut" / "epoch_0001", checkpoint_root=root / "cut"
        )
        torch.save(
            {"history": res.history, "ckpt": str(res.checkpoint_dir), "resumed": resumed.history},
            root / f"rank{rank}.pt",
        )
        tdist.barrier()  # tear down together (see test_distributed._worker)
    finally:
        tdist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_ranks_fit_agree_and_resume_exactly(
    data_path: Path, tiny_synthetic_config: SyntheticConfig, tmp_path: Path
) -> None:
    # LoRA dropout makes each rank's RNG stream part of the result: a resumed run on 2 ranks is
    # exact only if every rank gets its own stream back, not rank 0's.
    cfg = make_cfg(
        data_path,
        tiny_synthetic_config,
        **{
            "train.epochs": 2,
            "train.batch_size": 32,
            "embedder.finetune": "lora",
            "embedder.lora_dropout": 0.3,
        },
    )
    mp.spawn(
        _dist_worker,
        args=(_free_port(), to_dict(cfg), str(tmp_path)),
        nprocs=WORLD,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    h0, h1 = (r["history"] for r in ranks)
    assert len(h0) == len(h1) == 2
    for a, b in zip(h0, h1, strict=True):
        assert _comparable(a) == _comparable(b) and split_keys("val") <= set(a)
    assert split_keys("test") <= set(h0[-1])
    assert ranks[0]["ckpt"].endswith("epoch_0002")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch_0001", "epoch_0002"]
    for r in ranks:
        assert [_comparable(h) for h in r["resumed"]] == [_comparable(h) for h in h0]


def _diverging_worker(rank: int, port: int, cfg_dict: dict[str, Any], out: str) -> None:
    """One rank of a 2-rank run whose rank 1 alone diverges at its second step."""
    from vlm2rec.config import from_dict

    torch.set_num_threads(1)
    # If a rank stopped alone, the other would wait in the backward's all-reduce until this
    # timeout and fail with a gloo error, not with the loss error.
    tdist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    real, calls = train_mod.vlm2rec_loss, []

    def poisoned(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        parts = real(*args, **kwargs)
        calls.append(1)
        if rank == 1 and len(calls) == 2:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    train_mod.vlm2rec_loss = poisoned
    try:
        fit(
            from_dict(cfg_dict), DistInfo(rank, WORLD, rank, "cpu"), checkpoint_root=f"{out}/{rank}"
        )
        outcome = "finished"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        tdist.destroy_process_group()
    Path(out, f"rank{rank}.txt").write_text(outcome)


@pytest.mark.dist
@pytest.mark.slow
def test_local_loss_diverging_on_one_rank_stops_every_rank(
    data_path: Path, tiny_synthetic_config: SyntheticConfig, tmp_path: Path
) -> None:
    """loss.gather = false: each rank's loss is its own; one NaN stops both ranks with the error."""
    cfg = make_cfg(data_path, tiny_synthetic_config, **{"loss.gather": False, "train.epochs": 1})
    start = time.perf_counter()
    mp.spawn(
        _diverging_worker, args=(_free_port(), to_dict(cfg), str(tmp_path)), nprocs=WORLD, join=True
    )
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(WORLD)]
    for rank, text in enumerate(outcomes):
        assert text.startswith("NonFiniteLossError: non-finite loss at epoch 1, step 2"), text
        assert f"on rank 1 of 2; this rank ({rank}): cl_loss=" in text
    assert "loss=nan" in outcomes[1] and "loss=nan" not in outcomes[0]
    assert time.perf_counter() - start < 60  # stopped at once, not at the collective timeout


def test_fit_reports_the_sampled_protocol_when_asked(
    data_path: Path, tiny_synthetic_config: SyntheticConfig, tmp_path: Path
) -> None:
    cfg = make_cfg(
        data_path, tiny_synthetic_config, **{"train.epochs": 1, "eval.sampled_negatives": 10}
    )
    res = fit(cfg, checkpoint_root=tmp_path)
    for split, keys in (("val", res.best_val), ("test", res.test)):
        sampled = {f"{split}/sampled10/{m}@{k}" for m in ("hit", "ndcg") for k in (10, 20)}
        assert sampled <= set(keys) and split_keys(split) <= set(keys)
    assert _per_epoch_metrics(res.history[0]) == reported_metrics(cfg, synthetic=True)
    one_view = apply_overrides(cfg, {"eval.views": ["both"]})
    model_keys = {k for k in reported_metrics(one_view, True) if "/oracle/" not in k}
    assert "val/sampled10/hit@10" in model_keys and "val/ndcg@10" in model_keys
    assert not any("/image" in k or "reliance" in k or "erank" in k for k in model_keys)
