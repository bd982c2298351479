"""``python -m vlm2rec.cli {prepare,baselines,train,evaluate,export}``: one run without Ray.

``prepare SOURCE`` dispatches to the module that owns the source; each such module exposes
``add_prepare_arguments(parser, source)`` and ``prepare_from_args(args) -> PreparedDataset``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

PREPARE_SOURCES = {
    "synthetic": ("vlm2rec.data.prepare", "the built-in synthetic multimodal benchmark"),
    "amazon2018": ("vlm2rec.data.amazon", "Amazon Reviews 2018 (meta_*.json.gz + reviews/ratings)"),
    "amazon2023": ("vlm2rec.data.amazon", "Amazon Reviews 2023 (meta_*.jsonl.gz + *.jsonl.gz)"),
    "table": ("vlm2rec.data.table", "any items + interactions CSV/Parquet pair"),
}


def _add_prepare(sub: argparse._SubParsersAction) -> None:
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


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(path: Path, obj: Any) -> None:
    from vlm2rec.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n")


def _init_distributed() -> Any:
    """Under ``torchrun`` (WORLD_SIZE > 1) the CLI is the launcher: it owns the process group."""
    from vlm2rec.distributed import init_from_env

    return init_from_env()


def _config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key (before -> after)`` for every dotted config key whose value differs."""
    from vlm2rec.config import flatten

    old, new = flatten(before), flatten(after)
    missing = object()
    return [
        f"{key} ({old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r})"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing)
    ]


def _check_resume_config(out: Path, cfg: Any) -> None:
    """``--resume`` continues the run in ``out`` only with the config it was started with: a
    checkpoint trained under one config and continued under another is neither run."""
    from vlm2rec.config import ConfigError, to_dict

    path = out / "config.json"
    if not path.exists():
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: cannot read {path}: {exc}") from None
    changes = _config_changes(before, to_dict(cfg))
    if changes:
        raise ConfigError(
            f"--resume: {path} differs from the given config at {', '.join(changes)}; resume "
            "with the same --config and --set, or train into a new --out"
        )


def _run_train(args: argparse.Namespace) -> int:
    from vlm2rec.checkpoint import latest_checkpoint, load_checkpoint
    from vlm2rec.config import config_hash, load_config, parse_override, to_dict
    from vlm2rec.reporting import ConsoleReporter, JsonlReporter, MultiReporter, TensorBoardReporter
    from vlm2rec.train import fit

    cfg = load_config(args.config, dict(parse_override(o) for o in args.set))
    out = Path(args.out)
    if args.resume:
        _check_resume_config(out, cfg)  # before anything rewrites config.json
    dist = _init_distributed()
    resume = latest_checkpoint(out / "checkpoints") if args.resume else None
    if args.resume and resume is None:
        print(
            f"--resume: no checkpoint under {out / 'checkpoints'}; starting fresh", file=sys.stderr
        )
    reporters: list[Any] = []
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", to_dict(cfg))
        metrics_path = out / "metrics.jsonl"
        history = load_checkpoint(resume)[3].history if resume else []
        # Rewrite the log from the checkpoint so a kill between checkpoint and log loses nothing.
        metrics_path.write_text(
            "".join(json.dumps(_json_safe(h), sort_keys=True) + "\n" for h in history)
        )
        reporters = [
            ConsoleReporter(metric=cfg.eval.metric),
            JsonlReporter(metrics_path),
            TensorBoardReporter(out / "tensorboard"),
        ]
    reporter = MultiReporter(reporters)
    try:
        result = fit(cfg, dist, reporter, resume_from=resume, checkpoint_root=out / "checkpoints")
    finally:
        reporter.close()
    if dist.is_main:
        final = {
            "best_epoch": result.best_epoch,
            "best_metric": result.best_metric,
            "metric": cfg.eval.metric,
            "val": result.best_val,
            "test": result.test,
            "config": to_dict(cfg),
            "config_hash": config_hash(cfg),
        }
        _write_json(out / "final.json", final)
        print(
            f"best epoch {result.best_epoch}: {cfg.eval.metric} {result.best_metric:.4f}; "
            f"test/ndcg@10 {result.test.get('test/ndcg@10', float('nan')):.4f}; wrote {out / 'final.json'}"
        )
    return 0


def _load_run(run_dir: Path) -> Any:
    """Rebuild a finished run's model with its best weights (single process)."""
    from vlm2rec.checkpoint import latest_checkpoint, load_checkpoint
    from vlm2rec.config import from_dict
    from vlm2rec.distributed import DistInfo
    from vlm2rec.train import build_run

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint under {run_dir / 'checkpoints'}")
    cfg = from_dict(json.loads((run_dir / "config.json").read_text()))
    run = build_run(cfg, DistInfo())
    run.embedder.load_trainable_state_dict(load_checkpoint(ckpt)[1])
    return run


def _run_evaluate(args: argparse.Namespace) -> int:
    from vlm2rec.distributed import DistInfo
    from vlm2rec.train import eval_split, score

    run = _load_run(Path(args.run))
    split = eval_split(run, getattr(run.splits, args.split), args.split)
    metrics = score(run, split, DistInfo())
    _write_json(Path(args.run) / f"eval_{args.split}.json", metrics)
    print(json.dumps(_json_safe(metrics), indent=2, sort_keys=True))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlm2rec.distributed import DistInfo
    from vlm2rec.model_eval import embed_catalogue

    run = _load_run(Path(args.run))
    ids = pa.array(range(1, run.catalogue.num_items + 1), pa.int64())
    columns: dict[str, Any] = {"item_id": ids}
    for view in ("both", "text", "image"):
        emb = embed_catalogue(
            run.embedder, view, run.cfg.eval.item_batch_size, DistInfo(), run.device
        )
        flat = pa.array(emb[1:].cpu().numpy().reshape(-1), pa.float32())
        columns[f"embedding_{view}"] = pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])
    pq.write_table(pa.table(columns), args.out)
    print(f"wrote {args.out}: {len(ids)} items x {emb.shape[1]} dims x 3 views")
    return 0


#: (label, key infix, key suffix) of the rows ``baselines`` prints
_BASELINE_ROWS = (
    ("random", "baseline/random", ""),
    ("popularity", "baseline/popularity", ""),
    ("copy the history", "baseline/history", ""),
    ("oracle, text only", "oracle", "/text"),
    ("oracle, image only", "oracle", "/image"),
    ("oracle", "oracle", ""),
)


def _run_baselines(args: argparse.Namespace) -> int:
    from vlm2rec.baselines import baseline_metrics
    from vlm2rec.config import load_config, parse_override
    from vlm2rec.data.oracle import oracle_metrics
    from vlm2rec.data.prepare import ensure_dataset
    from vlm2rec.data.splits import make_splits

    cfg = load_config(args.config, dict(parse_override(o) for o in args.set))
    ds = ensure_dataset(cfg.data)
    splits = make_splits(ds.interactions, cfg.data.history_length, cfg.data.min_sequence_length)
    scores: dict[str, float] = {}
    for split in ("val", "test"):
        scores |= baseline_metrics(splits, split, ds.num_items, cfg.eval)
        if ds.meta.get("name") == "synthetic":
            scores |= oracle_metrics(cfg.data.synthetic, getattr(splits, split), split, cfg.eval)
    cols = [f"{split}/{m}" for split in ("val", "test") for m in ("ndcg@10", "recall@10")]
    print(
        f"{ds.path}: exclude_seen = {cfg.eval.exclude_seen!r}, ties = {cfg.eval.ties!r}, "
        f"history {cfg.data.history_length}; repeat rate val {splits.val.repeats.mean():.3f}, "
        f"test {splits.test.repeats.mean():.3f}"
    )
    print(f"{'ranker':<20}" + "".join(f"{c:>16}" for c in cols))
    for label, infix, suffix in _BASELINE_ROWS:
        keys = [f"{c.split('/')[0]}/{infix}/{c.split('/')[1]}{suffix}" for c in cols]
        if all(k in scores for k in keys):
            print(f"{label:<20}" + "".join(f"{scores[k]:>16.4f}" for k in keys))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlm2rec.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    train = sub.add_parser("train", help="one fine-tuning run (also under torchrun)")
    train.add_argument(
        "--config", required=True, help="run config TOML (e.g. search_spaces/base/synthetic.toml)"
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted-path override, e.g. --set loss.alpha=0.5 (repeatable)",
    )
    train.add_argument(
        "--out",
        required=True,
        help="run folder (metrics.jsonl, final.json, tensorboard/, checkpoints/)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --out"
    )
    train.set_defaults(func=_run_train)
    baselines = sub.add_parser(
        "baselines", help="score the model-free rankers (and, on synthetic data, the oracles)"
    )
    baselines.add_argument("--config", required=True, help="run config TOML (data and eval)")
    baselines.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="dotted-path override"
    )
    baselines.set_defaults(func=_run_baselines)
    evaluate = sub.add_parser("evaluate", help="re-score a run's best checkpoint")
    evaluate.add_argument("--run", required=True, help="run folder written by `train`")
    evaluate.add_argument("--split", choices=["val", "test"], default="test")
    evaluate.set_defaults(func=_run_evaluate)
    export = sub.add_parser("export", help="write the best checkpoint's item embeddings to Parquet")
    export.add_argument("--run", required=True, help="run folder written by `train`")
    export.add_argument("--out", required=True, help="output .parquet")
    export.set_defaults(func=_run_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; library errors propagate (tests and callers see the exception)."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def console(argv: Sequence[str] | None = None) -> int:
    """The command line: a bad config, dataset, input file or model is one clear line, exit 2."""
    from vlm2rec.config import ConfigError
    from vlm2rec.data.convert_common import ConversionError
    from vlm2rec.data.schema import DatasetError
    from vlm2rec.embedder import EmbedderLoadError

    try:
        return main(argv)
    except (
        ConfigError,
        DatasetError,
        ConversionError,
        EmbedderLoadError,
        FileNotFoundError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console())
