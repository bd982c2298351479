"""Load a prepared dataset, or build the synthetic benchmark first: what every run starts with.

:func:`ensure_dataset` is the one entry point of a run (``fit``, the study driver, the benchmarks):
it reads ``data.path`` and, where the folder is missing and ``data.prepare_if_missing``, builds the
synthetic benchmark there (:func:`prepare_synthetic`, which also records the generator's oracles in
``meta.json``). It also owns the ``prepare synthetic`` command line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from vlm2rec.config import DataConfig, EvalConfig, SyntheticConfig, to_dict
from vlm2rec.data.oracle import oracle_metrics
from vlm2rec.data.schema import DatasetError, PreparedDataset, read_dataset, write_dataset
from vlm2rec.data.splits import make_splits
from vlm2rec.data.synthetic import GENERATOR_VERSION, build_synthetic

__all__ = [
    "add_prepare_arguments",
    "default_oracles",
    "ensure_dataset",
    "prepare_from_args",
    "prepare_synthetic",
]


def default_oracles(cfg: SyntheticConfig, interactions: pa.Table) -> dict[str, Any]:
    """The oracles of :mod:`vlm2rec.data.oracle` under the default protocol (``DataConfig`` and
    ``EvalConfig`` defaults), with that protocol: what ``meta.json`` records."""
    data, ev = DataConfig(), EvalConfig()
    splits = make_splits(interactions, data.history_length, data.min_sequence_length)
    protocol = {
        "history_length": data.history_length,
        "min_sequence_length": data.min_sequence_length,
        "exclude_seen": ev.exclude_seen,
        "ties": ev.ties,
    }
    scores = {
        **oracle_metrics(cfg, splits.val, "val", ev),
        **oracle_metrics(cfg, splits.test, "test", ev),
    }
    return {"protocol": protocol, **scores}


def prepare_synthetic(cfg: SyntheticConfig, out: str | Path) -> PreparedDataset:
    """Build the benchmark and write it as a prepared dataset folder ``out``; its ``meta.json``
    carries the generator's oracles under the default protocol (``oracles``)."""
    items, interactions, meta = build_synthetic(cfg)
    meta["oracles"] = default_oracles(cfg, interactions)
    return write_dataset(out, items, interactions, meta)


def _check_knobs(ds: PreparedDataset, cfg: SyntheticConfig) -> None:
    meta, want = ds.meta, to_dict(cfg)
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise DatasetError(
            f"{ds.path / 'meta.json'}: synthetic generator_version {meta.get('generator_version')} "
            f"!= {GENERATOR_VERSION}; delete the folder to rebuild it"
        )
    got = meta.get("knobs", {})
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if diff:
        text = ", ".join(
            f"data.synthetic.{k}: folder {a!r} vs config {b!r}" for k, (a, b) in diff.items()
        )
        raise DatasetError(
            f"{ds.path / 'meta.json'}: the synthetic dataset there was built with other knobs ({text}); "
            "point data.path elsewhere or delete the folder"
        )


def ensure_dataset(data_cfg: DataConfig) -> PreparedDataset:
    """Read ``data_cfg.path``; build the synthetic benchmark there first if the folder is missing
    (or empty) and ``prepare_if_missing``. A synthetic folder built with other knobs is an error.

    Safe when several processes race: each builds into a private temporary sibling and renames it
    into place; the losers discard theirs and read the winner's.
    """
    path = Path(data_cfg.path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        if not data_cfg.prepare_if_missing:
            raise DatasetError(
                f"{path}: dataset folder does not exist (data.prepare_if_missing = false)"
            )
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        prepare_synthetic(data_cfg.synthetic, tmp)
        try:
            os.rename(tmp, path)  # atomic; replaces only a missing or empty folder
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    ds = read_dataset(path)
    if ds.meta.get("name") == "synthetic":
        _check_knobs(ds, data_cfg.synthetic)
    return ds


_FLAG_HELP = {
    "seed": "generator seed (same knobs + seed = same bytes)",
    "image_signal": "P(next item keeps the shape): signal only the image carries",
    "text_signal": "P(next item keeps the brand): signal only the text carries",
    "colour_signal": "P(next item has the user's favourite colour): signal both carry",
    "text_filler": "item-unique filler words per text (0 = text is a pure attribute shortcut)",
    "image_size": "side of the square PNG images in pixels",
}


def add_prepare_arguments(parser: argparse.ArgumentParser, source: str) -> None:
    """Flags of ``prepare synthetic``: ``--out`` and one flag per :class:`SyntheticConfig` knob."""
    del source  # one source only
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    for field in dataclasses.fields(SyntheticConfig):
        default = getattr(SyntheticConfig(), field.name)
        flag = "--" + field.name.replace("_", "-")
        help_text = _FLAG_HELP.get(field.name, field.name.replace("_", " "))
        parser.add_argument(
            flag, type=type(default), default=default, help=f"{help_text} (default {default})"
        )


def prepare_from_args(args: argparse.Namespace) -> PreparedDataset:
    """Run ``prepare synthetic`` from parsed flags."""
    cfg = SyntheticConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig)}
    )
    return prepare_synthetic(cfg, args.out)
