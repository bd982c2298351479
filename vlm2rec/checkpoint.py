"""Epoch checkpoints: everything a run needs to continue exactly, loadable without pickle.

One folder per epoch::

    trainable.safetensors   current trainable weights
    best.safetensors        trainable weights of the best epoch so far
    state.pt                optimiser and scheduler states (loaded with ``weights_only=True``)
    progress.json           epoch, best epoch / metric, metric history, config

Only trainable weights are stored: frozen weights are rebuilt from the config (a tiny model from its
seed, a real checkpoint from ``from_pretrained``), so a LoRA checkpoint stays megabytes. No RNG state
is stored: ``fit`` reseeds every epoch from the run's seed (the ``rng`` entry in the ``state.pt`` of
older checkpoints is read and ignored).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "Progress",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "read_progress",
    "save_checkpoint",
]

WEIGHTS, BEST, STATE, PROGRESS = (
    "trainable.safetensors",
    "best.safetensors",
    "state.pt",
    "progress.json",
)


@dataclasses.dataclass
class Progress:
    """Loop bookkeeping that travels with a checkpoint."""

    epoch: int = 0  #: last completed epoch (1-based; 0 = none)
    best_epoch: int = 0  #: epoch of the best validation metric (0 = none yet)
    best_metric: float | None = None  #: its value
    bad_validations: int = 0  #: validations since the last improvement (early stopping)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)  #: one dict per epoch


def read_progress(text: str | bytes) -> Progress:
    """The :class:`Progress` of a checkpoint from the text of its ``progress.json``.

    Raises ``ValueError`` (not JSON), ``KeyError`` (no ``progress``) or ``TypeError`` (an unknown
    field, or no mapping under ``progress``) for a file that is not one this module wrote.
    """
    return Progress(**json.loads(text)["progress"])


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(
    folder: Path,
    weights: dict[str, torch.Tensor],
    best_weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    progress: Progress,
    config: dict[str, Any],
) -> Path:
    """Write a checkpoint folder atomically (temp folder, then rename)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_contiguous(weights), str(tmp / WEIGHTS))
    save_file(_contiguous(best_weights), str(tmp / BEST))
    torch.save(state, tmp / STATE)
    payload = {"progress": dataclasses.asdict(progress), "config": config}
    (tmp / PROGRESS).write_text(json.dumps(payload, indent=1, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_checkpoint(
    folder: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any], Progress]:
    """Read a checkpoint folder: (weights, best weights, state, progress)."""
    folder = Path(folder)
    missing = [n for n in (WEIGHTS, BEST, STATE, PROGRESS) if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a checkpoint (missing {', '.join(missing)})")
    state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    progress = read_progress((folder / PROGRESS).read_text())
    return load_file(str(folder / WEIGHTS)), load_file(str(folder / BEST)), state, progress


def latest_checkpoint(root: Path) -> Path | None:
    """The highest ``epoch_XXXX`` folder under ``root`` (``None`` when there is none)."""
    found = sorted(
        p for p in Path(root).glob("epoch_*") if p.is_dir() and not p.name.endswith(".tmp")
    )
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the ``keep`` newest epoch folders (each already holds the best weights)."""
    found = sorted(
        p for p in Path(root).glob("epoch_*") if p.is_dir() and not p.name.endswith(".tmp")
    )
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
