"""Epoch checkpoints: exact round trip, pickle-free state loading, atomic replace, pruning."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import vlm2rec.checkpoint as ckpt_mod
from vlm2rec.checkpoint import (
    Progress,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    read_progress,
    save_checkpoint,
)


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 4, generator=g), "b.bias": torch.randn(5, generator=g)}


def _state() -> dict[str, Any]:
    """Real optimiser/scheduler states after two steps, plus an RNG state (as fit() saves)."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(2):
        (p**2).sum().backward()
        opt.step()
        sched.step()
    return {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {"cpu": torch.get_rng_state()},
    }


def _progress() -> Progress:
    history = [{"epoch": 1.0, "val/ndcg@10": 0.25}, {"epoch": 2.0, "val/ndcg@10": 0.5}]
    return Progress(epoch=2, best_epoch=2, best_metric=0.5, bad_validations=0, history=history)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    w, best, state, progress = _weights(0), _weights(1), _state(), _progress()
    folder = save_checkpoint(
        tmp_path / "epoch_0002", w, best, state, progress, {"seed": 3, "loss": {"alpha": 0.5}}
    )
    w2, best2, state2, progress2 = load_checkpoint(folder)
    assert w2.keys() == w.keys() and all(torch.equal(w[k], w2[k]) for k in w)
    assert all(torch.equal(best[k], best2[k]) for k in best)
    assert progress2 == progress
    assert torch.equal(state2["rng"]["cpu"], state["rng"]["cpu"])
    assert state2["scheduler"] == state["scheduler"]
    m1, m2 = state["optimizer"]["state"][0], state2["optimizer"]["state"][0]
    assert all(torch.equal(m1[k], m2[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    # the loaded optimiser state drives a fresh optimiser to the same next step
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    opt.load_state_dict(state2["optimizer"])
    assert opt.state_dict()["state"][0]["step"] == 2


def test_progress_without_best_metric_round_trips(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "epoch_0001", {}, {}, {}, Progress(epoch=1), {})
    assert load_checkpoint(folder)[3] == Progress(epoch=1, best_metric=None)


def test_weights_are_contiguous_cpu_copies(tmp_path: Path) -> None:
    # safetensors refuses non-contiguous tensors: a transposed view must still save
    w = {"t": torch.arange(12.0).reshape(3, 4).T}
    folder = save_checkpoint(tmp_path / "e", w, w, {}, Progress(), {})
    assert torch.equal(load_checkpoint(folder)[0]["t"], w["t"])


def test_read_progress_takes_text_or_bytes_and_refuses_other_files(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "epoch_0002", {}, {}, {}, _progress(), {"seed": 3})
    text = (folder / "progress.json").read_text()
    assert read_progress(text) == read_progress(text.encode()) == _progress()
    with pytest.raises(ValueError):
        read_progress("not json")
    with pytest.raises(KeyError):
        read_progress('{"config": {}}')
    with pytest.raises(TypeError, match="steps"):
        read_progress('{"progress": {"epoch": 1, "steps": 9}}')


class _NotAllowed:
    """An arbitrary object: loading it would need unrestricted unpickling."""


def test_state_is_loaded_weights_only(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "e", {}, {}, {"evil": _NotAllowed()}, Progress(), {})
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(folder)


def test_missing_file_is_named(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "epoch_0001", {}, {}, {}, Progress(), {})
    (folder / "best.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"epoch_0001.*best\.safetensors"):
        load_checkpoint(folder)


def test_save_replaces_folder_whole(tmp_path: Path) -> None:
    folder = tmp_path / "epoch_0001"
    save_checkpoint(folder, _weights(0), _weights(0), {}, Progress(epoch=1), {})
    (folder / "stray.txt").write_text("left over from an older run")
    save_checkpoint(folder, _weights(5), _weights(6), {}, Progress(epoch=7), {})
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["trainable.safetensors", "best.safetensors", "state.pt", "progress.json"]
    )
    w, _, _, progress = load_checkpoint(folder)
    assert progress.epoch == 7 and torch.equal(w["a.weight"], _weights(5)["a.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_0001"]  # no temp folder left


def test_crash_while_writing_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "epoch_0003"
    save_checkpoint(folder, _weights(0), _weights(0), {}, Progress(epoch=3), {})

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(folder, _weights(9), _weights(9), {}, Progress(epoch=99), {})
    monkeypatch.undo()
    w, _, _, progress = load_checkpoint(folder)
    assert progress.epoch == 3 and torch.equal(w["a.weight"], _weights(0)["a.weight"])
    # the half-written temp folder is never taken for a checkpoint
    assert (tmp_path / "epoch_0003.tmp").exists()
    assert latest_checkpoint(tmp_path) == folder


def _touch_epochs(root: Path, epochs: list[int]) -> None:
    for e in epochs:
        save_checkpoint(root / f"epoch_{e:04d}", {}, {}, {}, Progress(epoch=e), {})


def test_latest_and_prune_keep_newest(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    _touch_epochs(tmp_path, [3, 1, 10, 2, 9])  # creation order is not epoch order
    (tmp_path / "epoch_0011.tmp").mkdir()  # an interrupted write
    (tmp_path / "epoch_notes.txt").write_text("not a folder")
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch_0010"
    prune_checkpoints(tmp_path, keep=2)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["epoch_0009", "epoch_0010", "epoch_0011.tmp", "epoch_notes.txt"]
    prune_checkpoints(tmp_path, keep=5)  # fewer than keep: nothing removed
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch_0010"
    assert load_checkpoint(tmp_path / "epoch_0010")[3].epoch == 10
