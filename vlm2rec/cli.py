"""``python -m vlm2rec.cli {prepare,train,evaluate,export}``: one run without Ray.

``prepare SOURCE`` dispatches to the module that owns the source; each such module exposes
``add_prepare_arguments(parser, source)`` and ``prepare_from_args(args) -> PreparedDataset``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

PREPARE_SOURCES = {
    "synthetic": ("vlm2rec.data.synthetic", "the built-in synthetic multimodal benchmark"),
    "amazon2018": ("vlm2rec.data.amazon", "Amazon Reviews 2018 (meta_*.json.gz + reviews/ratings)"),
    "amazon2023": ("vlm2rec.data.amazon", "Amazon Reviews 2023 (meta_*.jsonl.gz + *.jsonl.gz)"),
    "table": ("vlm2rec.data.table", "any items + interactions CSV/Parquet pair"),
}


def _add_prepare(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    prepare = sub.add_parser("prepare", help="build a prepared dataset folder")
    sources = prepare.add_subparsers(dest="source", required=True)
    for source, (module, help_text) in PREPARE_SOURCES.items():
        p = sources.add_parser(source, help=help_text)
        importlib.import_module(module).add_prepare_arguments(p, source)
        p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    module = importlib.import_module(PREPARE_SOURCES[args.source][0])
    ds = module.prepare_from_args(args)
    meta = ds.meta
    print(
        f"wrote {ds.path}: {meta['num_users']} users, {meta['num_items']} items, "
        f"{meta['num_interactions']} interactions, {meta['items_without_image']} items without image, "
        f"{meta['items_without_text']} without text, fingerprint {meta['fingerprint'][:12]}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlm2rec.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
