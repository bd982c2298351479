"""From a parsed :class:`~vlm2rec.data.convert_common.RawCorpus` to a prepared dataset folder.

Order of the steps (each drop is counted in ``meta["dropped"]``):
1. interactions with an item that has no usable metadata -> ``unknown_item``;
2. repeated (user, item, timestamp) -> ``duplicate_interaction`` (the first is kept);
3. the k-core (users and items with >= k interactions, to a fixed point) -> ``k_core``;
4. users with fewer than ``min_length`` interactions -> ``short_user``;
5. dense ids: items 1..N in sorted source-id order, users 0..U-1 in sorted source-id order;
   each user's sequence sorted by time, ties kept in source order (a stable sort);
6. images fetched for the kept items only, then ``write_dataset``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from vlm2rec.data.convert_common import ConversionError, DropLog, RawCorpus
from vlm2rec.data.images import ImageOptions, ImageRequest, resolve_images
from vlm2rec.data.kcore import kcore_mask, min_length_mask
from vlm2rec.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, PreparedDataset, write_dataset

__all__ = ["build_dataset", "filter_interactions"]


def filter_interactions(
    users: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    k_core: int,
    min_length: int,
    log: DropLog,
) -> np.ndarray:
    """Indices of the interactions that survive dedup, k-core and the length filter, in source order.

    Shapes:
        users, items, times: ``[E]`` integer codes / timestamps; returns ``int64 [E']``.
    """
    frame = pd.DataFrame({"u": users, "i": items, "t": times})
    keep = ~frame.duplicated(keep="first").to_numpy()
    log.drop("duplicate_interaction", int((~keep).sum()))
    index = np.flatnonzero(keep)
    core = kcore_mask(users[index], items[index], k_core)
    log.drop("k_core", int((~core).sum()))
    index = index[core]
    long_enough = min_length_mask(users[index], min_length)
    log.drop("short_user", int((~long_enough).sum()))
    return index[long_enough]


def _dense(codes: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the used codes by sorted name: returns (new id per code-row, used names sorted)."""
    used = np.unique(codes)
    order = np.argsort(names[used], kind="stable")
    rank = np.empty(len(names), dtype=np.int64)
    rank[used[order]] = np.arange(len(used))
    return rank[codes], names[used[order]]


def _items_table(corpus: RawCorpus, source_ids: list[str], images: list[bytes | None]) -> pa.Table:
    records = [corpus.items[s] for s in source_ids]
    return pa.table(
        {
            "item_id": np.arange(1, len(source_ids) + 1, dtype=np.int64),
            "title": [r.title for r in records],
            "text": [r.text for r in records],
            "image": images,
            "source_id": source_ids,
        },
        schema=ITEMS_SCHEMA,
    )


def _summary(meta: dict[str, Any], dropped: dict[str, int], failures: dict[str, int]) -> str:
    lines = [
        f"{meta['name']}: {meta['num_users']} users, {meta['num_items']} items, "
        f"{meta['num_interactions']} interactions",
        f"  items without image: {meta['items_without_image']}, without text: "
        f"{meta['items_without_text']}",
        "  dropped: " + (", ".join(f"{k}={v}" for k, v in dropped.items()) or "nothing"),
        "  image failures: " + (", ".join(f"{k}={v}" for k, v in failures.items()) or "none"),
    ]
    return "\n".join(lines)


def _kept_rows(
    corpus: RawCorpus,
    item_names: np.ndarray,
    log: DropLog,
    k_core: int,
    min_length: int,
    name: str,
) -> np.ndarray:
    """Indices of the interactions that survive: items with metadata, then the k-core and
    minimum-length filters (each drop counted in ``log``); an empty result is an error."""
    item_codes = np.frombuffer(corpus.item_codes, dtype=np.int64)
    user_codes = np.frombuffer(corpus.user_codes, dtype=np.int64)
    times = np.frombuffer(corpus.timestamps, dtype=np.int64)
    known = np.array([n in corpus.items for n in item_names], dtype=bool)
    has_meta = known[item_codes] if len(item_codes) else np.zeros(0, dtype=bool)
    log.drop("unknown_item", int((~has_meta).sum()))
    rows = np.flatnonzero(has_meta)
    rows = rows[
        filter_interactions(
            user_codes[rows], item_codes[rows], times[rows], k_core, min_length, log
        )
    ]
    if len(rows) == 0:
        raise ConversionError(
            f"{name}: no interactions left after filtering (dropped: {log.as_dict()}); "
            "lower --k-core / --min-length or check the input files"
        )
    return rows


def build_dataset(
    corpus: RawCorpus,
    log: DropLog,
    out: Path,
    *,
    k_core: int,
    min_length: int,
    image_options: ImageOptions,
    meta: dict[str, Any],
) -> PreparedDataset:
    """Filter, number, fetch images and write; ``meta`` needs ``name`` and ``source``."""
    item_codes = np.frombuffer(corpus.item_codes, dtype=np.int64)
    user_codes = np.frombuffer(corpus.user_codes, dtype=np.int64)
    times = np.frombuffer(corpus.timestamps, dtype=np.int64)
    item_names = np.array(
        list(corpus.item_index), dtype=object
    )  # dicts keep insertion = code order
    user_names = np.array(list(corpus.user_index), dtype=object)
    rows = _kept_rows(corpus, item_names, log, k_core, min_length, meta["name"])
    item_ids, item_sources = _dense(item_codes[rows], item_names)
    user_ids, _ = _dense(user_codes[rows], user_names)
    order = np.lexsort((rows, times[rows], user_ids))  # by user, then time, then source order
    log.drop("items_unused", len(corpus.items) - len(item_sources))
    sources = [str(s) for s in item_sources]
    image_refs = [ImageRequest(s, corpus.items[s].image) for s in sources]
    results = resolve_images(image_refs, image_options)
    interactions = pa.table(
        {
            "user_id": user_ids[order],
            "item_id": item_ids[order] + 1,
            "timestamp": times[rows][order],
        },
        schema=INTERACTIONS_SCHEMA,
    )
    dropped = log.as_dict()
    full_meta = {
        **meta,
        "k_core": k_core,
        "min_length": min_length,
        "user_id_base": 0,
        "item_order": "sorted source_id",
        "dropped": dropped,
        "malformed_examples": dict(sorted(log.examples.items())),
        "image_failures": results.failures,
    }
    ds = write_dataset(out, _items_table(corpus, sources, results.images), interactions, full_meta)
    print(_summary(ds.meta, dropped, results.failures), file=sys.stderr)
    return ds
