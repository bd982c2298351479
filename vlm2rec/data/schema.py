"""The prepared-dataset format: two Parquet tables with explicit schemas and a ``meta.json``.

``items.parquet``
    ``item_id:int64`` dense 1..N (0 is reserved for padding), ``title:string`` (not null),
    ``text:string`` (nullable), ``image:binary`` (encoded PNG/JPEG bytes, nullable),
    ``source_id:string`` (the original id: ASIN, parent_asin, synthetic id).
``interactions.parquet``
    ``user_id:int64``, ``item_id:int64``, ``timestamp:int64``, sorted by user, then time.
``meta.json``
    name, counts, how it was made, and ``fingerprint``: a SHA-256 over both tables' content.

Every converter writes through :func:`write_dataset`; every reader goes through
:func:`read_dataset`, which validates and raises :class:`DatasetError` naming the file and the fault.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "INTERACTIONS_SCHEMA",
    "ITEMS_SCHEMA",
    "DatasetError",
    "PreparedDataset",
    "fingerprint",
    "read_dataset",
    "write_dataset",
]

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=True),
        pa.field("image", pa.binary(), nullable=True),
        pa.field("source_id", pa.string(), nullable=False),
    ]
)
INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
    ]
)
ITEMS_FILE, INTERACTIONS_FILE, META_FILE = "items.parquet", "interactions.parquet", "meta.json"


class DatasetError(ValueError):
    """A prepared dataset is missing or invalid; the message names the file and the fault."""


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """A validated dataset in memory."""

    path: Path
    items: pa.Table  #: ITEMS_SCHEMA, row i holds item_id i + 1
    interactions: pa.Table  #: INTERACTIONS_SCHEMA, sorted by (user_id, timestamp)
    meta: dict[str, Any]

    @property
    def num_items(self) -> int:
        return self.items.num_rows

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])


def fingerprint(items: pa.Table, interactions: pa.Table) -> str:
    """SHA-256 over the tables' values in schema order (independent of Parquet encoding/chunking)."""
    h = hashlib.sha256()
    for table in (items, interactions):
        for name in table.column_names:
            h.update(name.encode())
            column = table.column(name)
            if pa.types.is_integer(column.type):
                h.update(column.to_numpy().astype("<i8").tobytes())
                continue
            for value in column.to_pylist():  # strings / bytes: the items table only
                if value is None:
                    h.update(b"\x00")
                else:
                    raw = value.encode() if isinstance(value, str) else value
                    h.update(b"\x01" + len(raw).to_bytes(8, "little") + raw)
    return h.hexdigest()


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_dataset(
    path: str | Path, items: pa.Table, interactions: pa.Table, meta: dict[str, Any]
) -> PreparedDataset:
    """Validate, sort interactions, and write the three files; returns the dataset as read back.

    ``meta`` is completed with counts and the fingerprint; ``name`` and ``source`` are expected.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    items = items.cast(ITEMS_SCHEMA)
    interactions = interactions.cast(INTERACTIONS_SCHEMA).sort_by(
        [("user_id", "ascending"), ("timestamp", "ascending")]
    )
    _validate(items, interactions, path)
    images = items.column("image")
    texts = items.column("text")
    full_meta = {
        **meta,
        "num_users": len(np.unique(interactions.column("user_id").to_numpy())),
        "num_items": items.num_rows,
        "num_interactions": interactions.num_rows,
        "items_without_image": images.null_count,
        "items_without_text": texts.null_count,
        "fingerprint": fingerprint(items, interactions),
    }
    _atomic_write_table(items, path / ITEMS_FILE)
    _atomic_write_table(interactions, path / INTERACTIONS_FILE)
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path / META_FILE)
    return PreparedDataset(path, items, interactions, full_meta)


def _read_table(path: Path, schema: pa.Schema) -> pa.Table:
    if not path.exists():
        raise DatasetError(
            f"{path}: missing (not a prepared dataset? run `python -m vlm2rec.cli prepare`)"
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from None
    for field in schema:
        if field.name not in table.column_names:
            raise DatasetError(f"{path}: missing column {field.name!r} ({field.type})")
        got = table.schema.field(field.name).type
        if got != field.type:
            raise DatasetError(
                f"{path}: column {field.name!r} has type {got}, expected {field.type}"
            )
        if not field.nullable and table.column(field.name).null_count:
            raise DatasetError(f"{path}: column {field.name!r} has null values")
    return table.select(schema.names).cast(schema)


def _validate(items: pa.Table, interactions: pa.Table, path: Path) -> None:
    ids = items.column("item_id").to_numpy()
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
        bad = int(np.flatnonzero(ids != np.arange(1, len(ids) + 1))[0])
        raise DatasetError(
            f"{path / ITEMS_FILE}: item_id must be dense 1..{len(ids)} in order; row {bad} holds {ids[bad]}"
        )
    used = interactions.column("item_id").to_numpy()
    unknown = used[(used < 1) | (used > len(ids))]
    if unknown.size:
        raise DatasetError(
            f"{path / INTERACTIONS_FILE}: {unknown.size} interactions point at unknown items "
            f"(e.g. item_id {int(unknown[0])}; items are 1..{len(ids)})"
        )
    users = interactions.column("user_id").to_numpy()
    times = interactions.column("timestamp").to_numpy()
    order_ok = (np.diff(users) > 0) | ((np.diff(users) == 0) & (np.diff(times) >= 0))
    if not order_ok.all():
        row = int(np.flatnonzero(~order_ok)[0]) + 1
        raise DatasetError(
            f"{path / INTERACTIONS_FILE}: not sorted by (user_id, timestamp) at row {row}"
        )


def read_dataset(path: str | Path) -> PreparedDataset:
    """Read and validate a prepared dataset folder."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: dataset folder does not exist")
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise DatasetError(f"{meta_path}: missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{meta_path}: invalid JSON ({exc})") from None
    if "fingerprint" not in meta:
        raise DatasetError(f"{meta_path}: missing key 'fingerprint'")
    items = _read_table(path / ITEMS_FILE, ITEMS_SCHEMA)
    interactions = _read_table(path / INTERACTIONS_FILE, INTERACTIONS_SCHEMA)
    _validate(items, interactions, path)
    return PreparedDataset(path, items, interactions, meta)
