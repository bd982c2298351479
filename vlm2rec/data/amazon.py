"""Amazon Reviews converters: the 2018 release (McAuley lab) and the 2023 release.

2018: ``meta_<Category>.json(.gz)``, one object per line: JSON, or, in some files, a Python dict
literal (read with :func:`ast.literal_eval`, never ``eval``); items keyed by ``asin``; text from
``brand``, ``category`` and ``description``; image from ``imageURLHighRes`` / ``imageURL`` /
``image`` (first URL). Reviews: ``<Category>.json(.gz)`` (``reviewerID``, ``asin``,
``unixReviewTime`` in seconds) or the ratings CSV (``item,user,rating,timestamp``, no header).

2023: ``meta_<Category>.jsonl(.gz)``; items keyed by ``parent_asin``; text from ``store``,
``categories``, ``features``, ``description`` and ``details``; image from ``images`` (the ``MAIN``
variant first; ``hi_res``, else ``large``, else ``thumb``). Reviews: ``<Category>.jsonl(.gz)``
(``user_id``, ``parent_asin``, ``timestamp`` in milliseconds, kept in milliseconds).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlm2rec.data.convert_build import build_dataset
from vlm2rec.data.convert_common import (
    DropLog,
    RawCorpus,
    RawItem,
    add_common_arguments,
    clean_text,
    image_options_from_args,
    iter_lines,
    join_text,
)
from vlm2rec.data.schema import PreparedDataset

__all__ = [
    "add_prepare_arguments",
    "parse_item_2018",
    "parse_item_2023",
    "prepare_from_args",
    "read_corpus",
]

Record = dict[str, Any]


def _decode_object(line: bytes, where: str, log: DropLog, allow_literal: bool) -> Record | None:
    """One JSON object (or, for 2018, a Python dict literal) from a line; None if malformed."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        log.malformed("bad_encoding", where, str(exc))
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if not allow_literal:
            log.malformed("bad_json", where, str(exc))
            return None
        try:  # 2018 meta files written with str(dict): literal_eval parses data, runs no code
            obj = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            log.malformed("bad_json", where, f"neither JSON nor a Python literal ({exc})")
            return None
    if not isinstance(obj, dict):
        log.malformed("bad_json", where, f"expected an object, got {type(obj).__name__}")
        return None
    return obj


def _first_url(value: object) -> str | None:
    """The first non-empty string of a str or a (nested) list of them."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list | tuple):
        for part in value:
            if (url := _first_url(part)) is not None:
                return url
    return None


def parse_item_2018(record: Record) -> tuple[str | None, RawItem | None]:
    """``(asin, item)`` of a 2018 meta record; asin None = missing field, item None = no title."""
    asin = record.get("asin")
    if not isinstance(asin, str) or not asin.strip():
        return None, None
    title = clean_text(record.get("title"))
    if title is None:
        return asin.strip(), None
    text = join_text(
        [
            ("Brand", record.get("brand"), " "),
            ("Category", record.get("category"), " > "),
            ("Description", record.get("description"), " "),
        ]
    )
    image = None
    for key in ("imageURLHighRes", "imageURL", "image"):
        if (image := _first_url(record.get(key))) is not None:
            break
    return asin.strip(), RawItem(title, text, image)


def _image_2023(images: object) -> str | None:
    """URL of the MAIN image (else the first): hi_res, else large, else thumb."""
    if isinstance(images, dict):  # the column-wise form {"hi_res": [...], "variant": [...]}
        keys = list(images)
        images = [dict(zip(keys, row, strict=False)) for row in zip(*images.values(), strict=False)]
    if not isinstance(images, list):
        return None
    entries = [e for e in images if isinstance(e, dict)]
    entries.sort(key=lambda e: e.get("variant") != "MAIN")  # stable: MAIN first, else file order
    for entry in entries:
        for key in ("hi_res", "large", "thumb"):
            if (url := _first_url(entry.get(key))) is not None:
                return url
    return None


def parse_item_2023(record: Record) -> tuple[str | None, RawItem | None]:
    """``(parent_asin, item)`` of a 2023 meta record; same conventions as :func:`parse_item_2018`."""
    parent = record.get("parent_asin")
    if not isinstance(parent, str) or not parent.strip():
        return None, None
    title = clean_text(record.get("title"))
    if title is None:
        return parent.strip(), None
    text = join_text(
        [
            ("Store", record.get("store"), " "),
            ("Category", record.get("categories"), " > "),
            ("Features", record.get("features"), "; "),
            ("Description", record.get("description"), " "),
            ("Details", record.get("details"), "; "),
        ]
    )
    return parent.strip(), RawItem(title, text, _image_2023(record.get("images")))


def _timestamp(value: object) -> int | None:
    """A non-negative integer timestamp from an int or a digit string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and value >= 0 else None


def _read_items(path: Path, source: str, corpus: RawCorpus, log: DropLog) -> None:
    parse = parse_item_2018 if source == "amazon2018" else parse_item_2023
    key = "asin" if source == "amazon2018" else "parent_asin"
    for number, line in iter_lines(path, f"meta {path.name}"):
        where = f"{path}:{number}"
        record = _decode_object(line, where, log, allow_literal=source == "amazon2018")
        if record is None:
            continue
        source_id, item = parse(record)
        if source_id is None:
            log.malformed("missing_field", where, f"no {key!r}")
        elif item is None:
            log.drop("item_no_title")
        else:
            corpus.add_item(source_id, item, log)


def _review_rows(path: Path, source: str, log: DropLog) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """``(where, (user, item, raw timestamp))`` per review line; malformed lines are logged."""
    fields = {
        "amazon2018": ("reviewerID", "asin", "unixReviewTime"),
        "amazon2023": ("user_id", "parent_asin", "timestamp"),
    }[source]
    is_csv = path.name.lower().removesuffix(".gz").endswith(".csv")
    for number, line in iter_lines(path, f"reviews {path.name}"):
        where = f"{path}:{number}"
        if is_csv:  # 2018 ratings: item,user,rating,timestamp
            row = next(csv.reader([line.decode("utf-8", errors="replace")]))
            if len(row) != 4:
                log.malformed("bad_csv_row", where, f"expected 4 fields, got {len(row)}")
                continue
            yield where, (row[1], row[0], row[3])
            continue
        record = _decode_object(line, where, log, allow_literal=source == "amazon2018")
        if record is None:
            continue
        missing = [f for f in fields if record.get(f) in (None, "")]
        if missing:
            log.malformed("missing_field", where, f"no {', '.join(map(repr, missing))}")
            continue
        yield where, tuple(record[f] for f in fields)


def _read_reviews(path: Path, source: str, corpus: RawCorpus, log: DropLog) -> None:
    for where, (user, item, raw_time) in _review_rows(path, source, log):
        timestamp = _timestamp(raw_time)
        if timestamp is None:
            log.malformed(
                "bad_timestamp", where, f"expected a non-negative integer, got {raw_time!r}"
            )
            continue
        corpus.add_interaction(str(user).strip(), str(item).strip(), timestamp)


def read_corpus(meta: Path, reviews: Path, source: str, log: DropLog) -> RawCorpus:
    """Parse both files of one category; every unusable line is counted in ``log``."""
    corpus = RawCorpus()
    _read_items(meta, source, corpus, log)
    _read_reviews(reviews, source, corpus, log)
    return corpus


def _category(meta: Path) -> str:
    name = meta.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name.removeprefix("meta_")


def add_prepare_arguments(parser: argparse.ArgumentParser, source: str) -> None:
    ext = "json" if source == "amazon2018" else "jsonl"
    parser.add_argument("--meta", required=True, type=Path, help=f"meta_<Category>.{ext}(.gz)")
    reviews_help = f"<Category>.{ext}(.gz)" + (" or ratings CSV" if source == "amazon2018" else "")
    parser.add_argument("--reviews", required=True, type=Path, help=reviews_help)
    add_common_arguments(parser, default_k_core=5)


def prepare_from_args(args: argparse.Namespace) -> PreparedDataset:
    log = DropLog(strict=args.strict)
    corpus = read_corpus(args.meta, args.reviews, args.source, log)
    meta = {
        "name": args.name or f"{args.source}-{_category(args.meta)}",
        "source": args.source,
        "inputs": {"meta": str(args.meta), "reviews": str(args.reviews)},
        "timestamp_unit": "s" if args.source == "amazon2018" else "ms",
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
