"""Shared pieces of the real-data converters: raw records, drop counting, line reading, CLI options.

A converter parses its source into a :class:`RawCorpus` (items keyed by their source id, interactions
as source ids and timestamps) while a :class:`DropLog` counts every row it could not use, by reason.
:func:`vlm2rec.data.convert_build.build_dataset` turns the corpus into a prepared dataset.
"""

from __future__ import annotations

import argparse
import array
import collections
import dataclasses
import gzip
import html
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from vlm2rec.data.images import ImageOptions

__all__ = [
    "ConversionError",
    "DropLog",
    "RawCorpus",
    "RawItem",
    "add_common_arguments",
    "clean_text",
    "image_options_from_args",
    "iter_lines",
    "join_text",
]

_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # HTML tags in Amazon descriptions ("<br>", "<b>…</b>")
_SPACE = re.compile(r"\s+")


class ConversionError(ValueError):
    """A source row is malformed and ``--strict`` is on; the message names file and line/row."""


class DropLog:
    """Counts rows dropped by reason; under ``strict`` a malformed row raises instead.

    ``malformed`` is for rows that break the format (bad JSON, missing field, bad timestamp…);
    ``drop`` is for well-formed rows the pipeline chooses not to keep (no title, k-core…), which
    ``--strict`` never turns into errors.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}  #: first occurrence of each malformed reason

    def malformed(self, reason: str, where: str, detail: str) -> None:
        """Count (or, when strict, raise for) a malformed row at ``where`` (``file:line``)."""
        message = f"{where}: {reason}: {detail}"
        if self.strict:
            raise ConversionError(message + " (drop --strict to skip such rows)")
        self.counts[reason] += 1
        self.examples.setdefault(reason, message[:300])

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.counts[reason] += count

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@dataclasses.dataclass(frozen=True)
class RawItem:
    """An item as parsed from the source, before ids are assigned."""

    title: str
    text: str | None
    image: str | bytes | None  #: URL, file path or encoded bytes; None when the source has none


@dataclasses.dataclass
class RawCorpus:
    """Items by source id; interactions as int64 codes into ``user_names`` / ``item_names``.

    Ids are interned as they arrive so that tens of millions of reviews cost 24 bytes each plus one
    dict entry per distinct user/item, not three Python objects per review.
    """

    items: dict[str, RawItem] = dataclasses.field(default_factory=dict)
    user_index: dict[str, int] = dataclasses.field(default_factory=dict)  #: name -> code
    item_index: dict[str, int] = dataclasses.field(default_factory=dict)  #: name -> code
    user_codes: array.array[int] = dataclasses.field(default_factory=lambda: array.array("q"))
    item_codes: array.array[int] = dataclasses.field(default_factory=lambda: array.array("q"))
    timestamps: array.array[int] = dataclasses.field(default_factory=lambda: array.array("q"))

    def add_item(self, source_id: str, item: RawItem, log: DropLog) -> None:
        if source_id in self.items:  # keep the first record: later ones are usually re-crawls
            log.drop("duplicate_item")
            return
        self.items[source_id] = item

    def add_interaction(self, user: str, item: str, timestamp: int) -> None:
        self.user_codes.append(self.user_index.setdefault(user, len(self.user_index)))
        self.item_codes.append(self.item_index.setdefault(item, len(self.item_index)))
        self.timestamps.append(timestamp)


def clean_text(value: object) -> str | None:
    """Unescape HTML entities (repeatedly: Amazon text is often escaped twice), drop tags, squeeze
    whitespace; None when nothing is left."""
    if value is None:
        return None
    text = str(value)
    for _ in range(3):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _SPACE.sub(" ", _TAG.sub(" ", text)).strip()
    return text or None


def _flatten(value: object) -> list[str]:
    """Strings out of a str / list / nested list / dict value, in order."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}: {v}" for k, v in value.items() if clean_text(v)]
    if isinstance(value, list | tuple):
        return [s for part in value for s in _flatten(part)]
    return [str(value)]


def join_text(parts: Iterable[tuple[str, object, str]]) -> str | None:
    """``label: value`` lines from (label, value, separator) triples; lists are joined with sep."""
    lines = []
    for label, value, sep in parts:
        cleaned = [c for c in (clean_text(s) for s in _flatten(value)) if c]
        if cleaned:
            body = sep.join(cleaned)
            lines.append(f"{label}: {body}" if label else body)
    return "\n".join(lines) or None


def _open_binary(raw: IO[bytes]) -> IO[bytes] | gzip.GzipFile:
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":  # gzip by content, not by name: releases are not consistent
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


def iter_lines(path: Path, desc: str) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number from 1, line bytes)`` of a plain or gzip file, skipping blank lines,
    with a byte-progress bar on stderr (hidden when stderr is not a terminal)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    total = path.stat().st_size
    with (
        path.open("rb") as raw,
        _open_binary(raw) as stream,
        tqdm(
            total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=None
        ) as bar,
    ):
        done = 0
        for number, line in enumerate(stream, start=1):
            if number % 4096 == 0:  # raw.tell() is the compressed position: true progress for .gz
                bar.update(raw.tell() - done)
                done = raw.tell()
            if line.strip():
                yield number, line
        bar.update(total - done)


def add_common_arguments(parser: argparse.ArgumentParser, default_k_core: int) -> None:
    """Output, filtering, strictness and image options shared by all real-data converters."""
    parser.add_argument("--out", required=True, type=Path, help="prepared dataset folder to write")
    parser.add_argument("--name", default=None, help="dataset name in meta.json (default: derived)")
    parser.add_argument(
        "--k-core", type=int, default=default_k_core, help="keep the K-core (0/1: no filter)"
    )
    parser.add_argument(
        "--min-length",
        type=int,
        default=3,
        help="drop users with fewer interactions (after k-core)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed row")
    images = parser.add_argument_group("images")
    images.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of <source_id>.<ext> images, looked up before any URL (URLs are still "
        "fetched for items missing there unless --no-download)",
    )
    images.add_argument("--no-download", action="store_true", help="never fetch image URLs")
    images.add_argument(
        "--cache", type=Path, default=None, help="download cache (<out>/.image_cache)"
    )
    images.add_argument("--max-image-bytes", type=int, default=10 * 2**20)
    images.add_argument("--max-image-pixels", type=int, default=40_000_000)
    images.add_argument("--max-image-side", type=int, default=512, help="re-encoded longest side")
    images.add_argument("--workers", type=int, default=8, help="concurrent image downloads")
    images.add_argument(
        "--image-timeout", type=float, default=10.0, help="seconds per stalled read"
    )
    images.add_argument("--image-retries", type=int, default=3)
    images.add_argument("--image-backoff", type=float, default=0.5, help="first retry wait (s)")


def image_options_from_args(args: argparse.Namespace) -> ImageOptions:
    return ImageOptions(
        image_dir=args.images,
        download=not args.no_download,
        cache_dir=args.cache if args.cache is not None else args.out / ".image_cache",
        max_bytes=args.max_image_bytes,
        max_pixels=args.max_image_pixels,
        max_side=args.max_image_side,
        workers=args.workers,
        timeout_s=args.image_timeout,
        retries=args.image_retries,
        backoff_s=args.image_backoff,
    )
