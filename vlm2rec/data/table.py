"""Generic importer: an items table and an interactions table, CSV or Parquet (by file extension).

Columns are named by options (defaults in brackets): ``--item-id-col`` [item_id] in both tables,
``--title-col`` [title], ``--text-col`` [text, if present], ``--image-col`` [image, if present],
``--user-col`` [user_id], ``--time-col`` [timestamp]. An image cell may hold encoded bytes, a
``{"bytes", "path"}`` struct (the Hugging Face ``Image`` feature), an http(s) URL, or a file path
(relative paths are taken from the items file's folder). Timestamps are integers (kept as given),
integer strings, or datetimes / ISO-8601 strings (converted to epoch seconds, naive = UTC).
CSV cells are read as strings so ids such as ``007`` keep their leading zeros.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from pathlib import Path
from typing import Any

import pandas as pd

from vlm2rec.data.convert_build import build_dataset
from vlm2rec.data.convert_common import (
    ConversionError,
    DropLog,
    RawCorpus,
    RawItem,
    add_common_arguments,
    clean_text,
    image_options_from_args,
)
from vlm2rec.data.schema import PreparedDataset

__all__ = ["add_prepare_arguments", "parse_timestamp", "prepare_from_args", "read_table"]

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (all cells as strings, empty = missing) or Parquet file, chosen by extension."""
    name = path.name.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if name.endswith(CSV_SUFFIXES):
        sep = "\t" if ".tsv" in name else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    if name.endswith(PARQUET_SUFFIXES):
        return pd.read_parquet(path)
    raise ConversionError(
        f"{path}: unknown table format; expected one of {CSV_SUFFIXES + PARQUET_SUFFIXES}"
    )


def _missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return value is pd.NaT or (isinstance(value, str) and not value.strip())


def _id(value: object) -> str | None:
    """An id cell as a string; ``3.0`` (an int column with nulls, read by pandas) becomes ``3``."""
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_timestamp(value: object) -> int | None:
    """An integer timestamp from an int, an integer-valued float, a digit string, a datetime or an
    ISO-8601 string (the last two as epoch seconds, naive = UTC); None when it is none of these."""
    if _missing(value) or isinstance(value, bool):
        return None
    if isinstance(value, dt.datetime):  # pandas Timestamp is a datetime subclass
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return int(aware.timestamp())
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    if hasattr(value, "__index__"):  # int, numpy integer
        return int(value) if int(value) >= 0 else None
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        return parse_timestamp(dt.datetime.fromisoformat(text))
    except ValueError:
        return None


def _image(value: object) -> str | bytes | None:
    if isinstance(value, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
        return _image(value.get("bytes")) or _image(value.get("path"))
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value) or None
    return None if _missing(value) else str(value).strip()


def _anchor(ref: str | bytes | None, folder: Path) -> str | bytes | None:
    """A relative file path is taken from the items file's folder, not the working directory."""
    if not isinstance(ref, str) or "://" in ref or Path(ref).is_absolute():
        return ref
    return str(folder / ref)


def _where(path: Path, index: int) -> str:
    is_csv = path.name.lower().endswith(CSV_SUFFIXES)
    return f"{path}:{index + 2}" if is_csv else f"{path}: row {index}"  # CSV line 1 is the header


def _column(frame: pd.DataFrame, path: Path, name: str | None, option: str) -> list[Any] | None:
    if name is None:
        return None
    if name not in frame.columns:
        raise ConversionError(
            f"{path}: no column {name!r} (set by {option}); columns are {list(frame.columns)}"
        )
    return frame[name].tolist()


def _optional(frame: pd.DataFrame, given: str | None, default: str) -> str | None:
    """The named column, or the default name if that column exists, or None (no such data)."""
    return given if given is not None else (default if default in frame.columns else None)


def _read_items(args: argparse.Namespace, corpus: RawCorpus, log: DropLog) -> None:
    path: Path = args.items
    frame = read_table(path)
    ids = _column(frame, path, args.item_id_col, "--item-id-col") or []
    titles = _column(frame, path, args.title_col, "--title-col") or []
    texts = _column(frame, path, _optional(frame, args.text_col, "text"), "--text-col")
    images = _column(frame, path, _optional(frame, args.image_col, "image"), "--image-col")
    for index, (raw_id, raw_title) in enumerate(zip(ids, titles, strict=True)):
        source_id = _id(raw_id)
        if source_id is None:
            log.malformed("missing_field", _where(path, index), f"empty {args.item_id_col!r}")
            continue
        title = clean_text(None if _missing(raw_title) else raw_title)
        if title is None:
            log.drop("item_no_title")
            continue
        text = (
            clean_text(texts[index]) if texts is not None and not _missing(texts[index]) else None
        )
        image = _anchor(_image(images[index]), path.parent) if images is not None else None
        corpus.add_item(source_id, RawItem(title, text, image), log)


def _read_interactions(args: argparse.Namespace, corpus: RawCorpus, log: DropLog) -> None:
    path: Path = args.interactions
    frame = read_table(path)
    users = _column(frame, path, args.user_col, "--user-col") or []
    items = _column(frame, path, args.item_id_col, "--item-id-col") or []
    times = _column(frame, path, args.time_col, "--time-col") or []
    for index, (raw_user, raw_item, raw_time) in enumerate(zip(users, items, times, strict=True)):
        user, item = _id(raw_user), _id(raw_item)
        if user is None or item is None:
            name = args.user_col if user is None else args.item_id_col
            log.malformed("missing_field", _where(path, index), f"empty {name!r}")
            continue
        timestamp = parse_timestamp(raw_time)
        if timestamp is None:
            log.malformed("bad_timestamp", _where(path, index), f"cannot read {raw_time!r}")
            continue
        corpus.add_interaction(user, item, timestamp)


def add_prepare_arguments(parser: argparse.ArgumentParser, source: str) -> None:
    parser.add_argument("--items", required=True, type=Path, help="items table (.csv/.parquet)")
    parser.add_argument("--interactions", required=True, type=Path, help="interactions table")
    columns = parser.add_argument_group("columns")
    columns.add_argument("--item-id-col", default="item_id", help="item id, in both tables")
    columns.add_argument("--title-col", default="title")
    columns.add_argument("--text-col", default=None, help="[text, if present]")
    columns.add_argument("--image-col", default=None, help="bytes, URL or path [image, if present]")
    columns.add_argument("--user-col", default="user_id")
    columns.add_argument("--time-col", default="timestamp")
    add_common_arguments(parser, default_k_core=0)


def prepare_from_args(args: argparse.Namespace) -> PreparedDataset:
    log = DropLog(strict=args.strict)
    corpus = RawCorpus()
    _read_items(args, corpus, log)
    _read_interactions(args, corpus, log)
    meta = {
        "name": args.name or f"table-{args.items.stem.removesuffix('.csv')}",
        "source": "table",
        "inputs": {"items": str(args.items), "interactions": str(args.interactions)},
        "timestamp_unit": "as given (datetimes: s)",
    }
    return build_dataset(
        corpus,
        log,
        args.out,
        k_core=args.k_core,
        min_length=args.min_length,
        image_options=image_options_from_args(args),
        meta=meta,
    )
