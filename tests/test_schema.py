"""Prepared-dataset validation: every fault is an error naming the file and what was expected."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from vlm2rec.data.schema import (
    DatasetError,
    PreparedDataset,
    fingerprint,
    read_dataset,
    write_dataset,
)


@pytest.fixture()
def copy(tiny_dataset: PreparedDataset, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset to corrupt."""
    return Path(shutil.copytree(tiny_dataset.path, tmp_path / "ds"))


def _rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def _replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


def test_copy_is_valid(copy: Path, tiny_dataset: PreparedDataset) -> None:
    assert read_dataset(copy).fingerprint == tiny_dataset.fingerprint


def test_missing_folder_table_and_meta(copy: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere: dataset folder does not exist"):
        read_dataset(copy.parent / "nowhere")
    (copy / "interactions.parquet").unlink()
    with pytest.raises(DatasetError, match=r"interactions\.parquet: missing"):
        read_dataset(copy)
    (copy / "meta.json").unlink()
    with pytest.raises(DatasetError, match=r"meta\.json: missing"):
        read_dataset(copy)


def test_bad_meta(copy: Path) -> None:
    (copy / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"meta\.json: invalid JSON"):
        read_dataset(copy)
    (copy / "meta.json").write_text(json.dumps({"name": "synthetic"}))
    with pytest.raises(DatasetError, match=r"meta\.json: missing key 'fingerprint'"):
        read_dataset(copy)


def test_not_parquet(copy: Path) -> None:
    (copy / "items.parquet").write_bytes(b"definitely not parquet")
    with pytest.raises(DatasetError, match=r"items\.parquet: not a readable Parquet file"):
        read_dataset(copy)


def test_missing_column(copy: Path) -> None:
    _rewrite(copy / "items.parquet", lambda t: t.drop_columns(["title"]))
    with pytest.raises(DatasetError, match=r"items\.parquet: missing column 'title' \(string\)"):
        read_dataset(copy)


def test_wrong_type(copy: Path) -> None:
    _rewrite(
        copy / "interactions.parquet",
        lambda t: _replace(t, "timestamp", pc.cast(t["timestamp"], pa.string())),
    )
    with pytest.raises(
        DatasetError,
        match=r"interactions\.parquet: column 'timestamp' has type string, expected int64",
    ):
        read_dataset(copy)


def test_null_in_required_column(copy: Path) -> None:
    def null_title(t: pa.Table) -> pa.Table:
        titles = t["title"].to_pylist()
        return _replace(t, "title", pa.array([None, *titles[1:]], pa.string()))

    _rewrite(copy / "items.parquet", null_title)
    with pytest.raises(DatasetError, match=r"items\.parquet: column 'title' has null values"):
        read_dataset(copy)


def test_non_dense_item_ids(copy: Path) -> None:
    def gap(t: pa.Table) -> pa.Table:
        ids = t["item_id"].to_pylist()
        return _replace(t, "item_id", pa.array([*ids[:5], *(i + 1 for i in ids[5:])], pa.int64()))

    _rewrite(copy / "items.parquet", gap)
    with pytest.raises(
        DatasetError, match=r"items\.parquet: item_id must be dense 1\.\.32 in order; row 5 holds 7"
    ):
        read_dataset(copy)


def test_unknown_item_ids(copy: Path) -> None:
    def unknown(t: pa.Table) -> pa.Table:
        ids = t["item_id"].to_pylist()
        return _replace(t, "item_id", pa.array([*ids[:-1], 33], pa.int64()))

    _rewrite(copy / "interactions.parquet", unknown)
    with pytest.raises(
        DatasetError,
        match=r"interactions\.parquet: 1 interactions point at unknown items \(e\.g\. item_id 33",
    ):
        read_dataset(copy)


def test_unsorted_interactions(copy: Path) -> None:
    _rewrite(copy / "interactions.parquet", lambda t: t.take(list(range(t.num_rows - 1, -1, -1))))
    with pytest.raises(
        DatasetError, match=r"interactions\.parquet: not sorted by \(user_id, timestamp\) at row 1"
    ):
        read_dataset(copy)


def test_write_sorts_and_validates(tmp_path: Path, tiny_dataset: PreparedDataset) -> None:
    shuffled = tiny_dataset.interactions.take(list(range(tiny_dataset.interactions.num_rows))[::-1])
    ds = write_dataset(
        tmp_path / "a", tiny_dataset.items, shuffled, {"name": "t", "source": "test"}
    )
    assert ds.interactions.equals(tiny_dataset.interactions)
    assert (
        ds.fingerprint == tiny_dataset.fingerprint
        and ds.meta["num_interactions"] == shuffled.num_rows
    )
    bad = _replace(shuffled, "item_id", pc.add(shuffled["item_id"], 100))
    with pytest.raises(DatasetError, match=r"b/interactions\.parquet: .* unknown items"):
        write_dataset(tmp_path / "b", tiny_dataset.items, bad, {"name": "t", "source": "test"})


def test_fingerprint_ignores_chunking_and_sees_content(tiny_dataset: PreparedDataset) -> None:
    items, inter = tiny_dataset.items, tiny_dataset.interactions
    chunked = pa.concat_tables([items.slice(0, 7), items.slice(7)])
    assert chunked.column("image").num_chunks == 2
    assert fingerprint(chunked, inter) == fingerprint(items, inter)
    images = items["image"].to_pylist()
    images[3] = images[3][:-1] + bytes([images[3][-1] ^ 1])  # flip one bit of one image
    changed = _replace(items, "image", pa.array(images, pa.binary()))
    assert fingerprint(changed, inter) != fingerprint(items, inter)
