"""Generic CSV/Parquet importer end to end through ``vlm2rec.cli.main``."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlm2rec.cli import main
from vlm2rec.data.convert_common import ConversionError
from vlm2rec.data.schema import read_dataset
from vlm2rec.data.table import parse_timestamp


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _red(image: bytes | None) -> int:
    assert image is not None
    with Image.open(io.BytesIO(image)) as img:
        return int(img.convert("RGB").getpixel((2, 2))[0])  # type: ignore[index]


def _run(items: Path, interactions: Path, out: Path, *extra: str) -> int:
    args = ["prepare", "table", "--items", str(items), "--interactions", str(interactions)]
    return main([*args, "--out", str(out), "--no-download", "--min-length", "2", *extra])


def test_csv_with_custom_columns(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(_png((255, 0, 0)))
    items = tmp_path / "items.csv"
    items.write_text(
        "sku,name,blurb,picture\n"
        '007,"Tea &amp; cups",fine  porcelain,pics/a.png\n'  # relative to the items file's folder
        "8,Kettle,,http://127.0.0.1:9/k.jpg\n"
        "9,Ünïcode — ok,,\n"
        ",No id,,\n"
        "10,,no title,\n",
        encoding="utf-8",
    )
    inter = tmp_path / "events.csv"
    inter.write_text(
        "who,sku,when\n"
        "u1,007,2021-01-01T00:00:10\n"
        "u1,8,2021-01-01T00:00:05+00:00\n"
        "u1,9,1609459220\n"
        "u2,8,5\n"
        "u2,007,5\n"  # tie at t=5: file order kept
        "u2,9,not a time\n"
        ",9,7\n",
        encoding="utf-8",
    )
    cols = ["--item-id-col", "sku", "--title-col", "name", "--text-col", "blurb"]
    cols += ["--image-col", "picture", "--user-col", "who", "--time-col", "when"]
    assert _run(items, inter, tmp_path / "out", *cols) == 0
    ds = read_dataset(tmp_path / "out")
    rows = ds.items.to_pylist()
    assert [r["source_id"] for r in rows] == ["007", "8", "9"]  # leading zeros survive CSV reading
    assert [r["title"] for r in rows] == ["Tea & cups", "Kettle", "Ünïcode — ok"]
    assert [r["text"] for r in rows] == ["fine porcelain", None, None]
    assert _red(rows[0]["image"]) > 200
    assert [r["image"] is None for r in rows] == [False, True, True]
    got = [(r["user_id"], r["item_id"], r["timestamp"]) for r in ds.interactions.to_pylist()]
    assert got == [(0, 2, 1609459205), (0, 1, 1609459210), (0, 3, 1609459220), (1, 2, 5), (1, 1, 5)]
    assert ds.meta["dropped"] == {
        "bad_timestamp": 1,
        "item_no_title": 1,
        "missing_field": 2,
    }
    assert ds.meta["image_failures"] == {"download_disabled": 1, "no_reference": 1}
    assert "events.csv:7" in ds.meta["malformed_examples"]["bad_timestamp"]  # header is line 1
    with pytest.raises(ConversionError, match=r"items\.csv:5: missing_field"):
        _run(items, inter, tmp_path / "strict", *cols, "--strict")


def test_parquet_with_bytes_structs_and_datetimes(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    pd.DataFrame(
        {
            "item_id": [2, 1, 3],
            "title": ["Two", "One", "Three"],
            "image": [
                {"bytes": _png((255, 0, 0)), "path": None},  # Hugging Face Image feature
                {"bytes": None, "path": None},
                {"bytes": b"garbage", "path": None},
            ],
        }
    ).to_parquet(items)
    inter = tmp_path / "interactions.parquet"
    when = pd.to_datetime(
        ["2020-01-01 00:00:02", "2020-01-01 00:00:01", "2020-01-01 00:00:00", "2020-01-02 00:00:00"]
    )
    pd.DataFrame({"user_id": [5, 5, 6, 6], "item_id": [2, 1, 3, 2], "timestamp": when}).to_parquet(
        inter
    )
    assert _run(items, inter, tmp_path / "out") == 0
    ds = read_dataset(tmp_path / "out")
    assert ds.items.column("source_id").to_pylist() == ["1", "2", "3"]
    images = ds.items.column("image").to_pylist()
    assert images[0] is None and _red(images[1]) > 200 and images[2] is None
    assert ds.meta["image_failures"] == {"no_reference": 1, "undecodable": 1}
    got = [(r["user_id"], r["item_id"], r["timestamp"]) for r in ds.interactions.to_pylist()]
    base = int(dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp())
    assert got == [(0, 1, base + 1), (0, 2, base + 2), (1, 3, base), (1, 2, base + 86400)]


def test_errors_name_file_and_column(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text("id,title\n1,A\n")
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,timestamp\nu,1,1\n")
    with pytest.raises(
        ConversionError, match=r"items\.csv: no column 'item_id' \(set by --item-id-col\)"
    ):
        _run(items, inter, tmp_path / "out")
    with pytest.raises(ConversionError, match=r"items\.json: unknown table format"):
        bad = tmp_path / "items.json"
        bad.write_text("{}")
        _run(bad, inter, tmp_path / "out")


def test_parse_timestamp() -> None:
    assert parse_timestamp(12) == 12
    assert parse_timestamp(np.int64(12)) == 12
    assert parse_timestamp(12.0) == 12
    assert parse_timestamp(" 0012 ") == 12
    assert parse_timestamp("1970-01-01T00:01:00") == 60
    assert parse_timestamp("1970-01-01T01:01:00+01:00") == 60
    assert parse_timestamp(pd.Timestamp("1970-01-01 00:00:03")) == 3
    for bad in (-1, 1.5, True, None, float("nan"), pd.NaT, "", "soon"):
        assert parse_timestamp(bad) is None, bad
