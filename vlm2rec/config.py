"""Run configuration: frozen dataclasses per concern, loaded strictly from TOML or dicts.

A run is fully described by one :class:`RunConfig`. Every field has a one-line ``#:`` comment.
Loading is strict so that a typo never silently falls back to a default:

* an unknown key is an error naming the key and the closest valid keys;
* a value of the wrong type is an error naming the key, the expected and the given type
  (an ``int`` is accepted where a ``float`` is expected, a ``bool`` never counts as a number);
* a ``Literal`` field accepts only its listed values;
* out-of-range values fail in ``__post_init__`` with the dotted key.

Dotted paths (``"loss.alpha"``) are the single naming scheme shared by ``--set``, search spaces
and leaderboard columns (``param.loss.alpha``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

__all__ = [
    "ConfigError",
    "DataConfig",
    "EmbedderConfig",
    "EvalConfig",
    "LossConfig",
    "OptimConfig",
    "RunConfig",
    "SyntheticConfig",
    "TrainConfig",
    "apply_overrides",
    "config_hash",
    "flatten",
    "from_dict",
    "load_config",
    "parse_override",
    "to_dict",
    "unknown_key",
]

View = Literal["both", "text", "image"]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the dotted key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the built-in synthetic multimodal benchmark (see ``vlm2rec.data.synthetic``)."""

    seed: int = 0  #: seed of the generator; same knobs + seed = byte-identical tables
    users: int = 2000  #: number of users
    items: int = (
        256  #: catalogue size (attribute grid cycled; 256 = 8 shapes x 8 brands x 2 colours x 2)
    )
    shapes: int = 8  #: values of the image-only attribute (shape drawn in the picture)
    brands: int = 8  #: values of the text-only attribute (brand word in the text)
    colours: int = 2  #: values of the attribute visible in both (colour of shape / colour word)
    min_length: int = 5  #: shortest user sequence (>= 3 for leave-one-out)
    max_length: int = 20  #: longest user sequence
    image_signal: float = 0.9  #: P(next shape follows the transition); 0 = independent of history
    text_signal: float = 0.9  #: P(next brand follows the transition); 0 = independent of history
    colour_signal: float = 0.7  #: P(next item has the user's favourite colour)
    text_filler: int = (
        0  #: item-unique filler words per text (0 = text is a pure attribute shortcut)
    )
    image_size: int = 32  #: side of the square PNG images in pixels
    #: how shape and brand move: "permutation" = to pi(current) (a seeded permutation without fixed
    #: points, so the next item does not look like the last one), "keep" = stay on the current one
    transition: Literal["keep", "permutation"] = "permutation"

    def __post_init__(self) -> None:
        for name in ("users", "items", "shapes", "brands", "colours", "image_size"):
            _check(getattr(self, name) >= 1, f"data.synthetic.{name}", "must be >= 1")
        _check(self.min_length >= 3, "data.synthetic.min_length", "must be >= 3 (leave-one-out)")
        _check(
            self.max_length >= self.min_length, "data.synthetic.max_length", "must be >= min_length"
        )
        for name in ("image_signal", "text_signal", "colour_signal"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"data.synthetic.{name}", "must be in [0, 1]")
        _check(self.text_filler >= 0, "data.synthetic.text_filler", "must be >= 0")
        # Values that own an item: shapes cycle first over the grid, then brands.
        present = (min(self.shapes, self.items), min(self.brands, -(-self.items // self.shapes)))
        _check(
            self.transition == "keep" or min(present) >= 2,
            "data.synthetic.transition",
            '"permutation" needs >= 2 shapes and >= 2 brands that own an item (else use "keep")',
        )
        _check(
            self.max_length <= self.items,
            "data.synthetic.max_length",
            f"must be <= items ({self.items}): a user never meets an item twice",
        )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the prepared dataset lives and how sequences are cut."""

    path: str = "data/synthetic"  #: prepared dataset folder (items.parquet, interactions.parquet, meta.json)
    prepare_if_missing: bool = (
        True  #: build the synthetic benchmark at `path` if the folder is missing
    )
    synthetic: SyntheticConfig = dataclasses.field(
        default_factory=SyntheticConfig
    )  #: benchmark knobs
    history_length: int = 4  #: L: the most recent L items form a history (newest last)
    min_sequence_length: int = 3  #: users with fewer interactions are dropped (3 = train+val+test)
    loader_workers: int = 0  #: torch DataLoader worker processes

    def __post_init__(self) -> None:
        _check(self.history_length >= 1, "data.history_length", "must be >= 1")
        _check(self.min_sequence_length >= 3, "data.min_sequence_length", "must be >= 3")
        _check(self.loader_workers >= 0, "data.loader_workers", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class EmbedderConfig:
    """The VLM used as item and sequence encoder (METHOD.md §2)."""

    #: tiny-qwen2vl | tiny-qwen2.5vl | tiny-qwen3vl | tiny-clip | tiny-siglip | hub id | local folder
    name: str = "tiny-qwen2vl"
    #: how text+image make the `both` view: decoder VLMs joint | external, dual encoders
    #: mean | concat_proj (checked against the model's family when it is built); auto = joint / mean
    fusion: Literal["auto", "joint", "external", "mean", "concat_proj"] = "auto"
    finetune: Literal["lora", "full", "frozen"] = (
        "lora"  #: LoRA adapters, all weights, or nothing trained
    )
    lora_rank: int = 8  #: LoRA rank r
    lora_alpha: float = 16.0  #: LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  #: dropout on the LoRA input
    lora_target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    )  #: module names adapted
    freeze_vision: bool = (
        True  #: keep the vision tower frozen (LoRA or full fine-tuning of the LM only)
    )
    gradient_checkpointing: bool = False  #: trade compute for activation memory
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  #: auto = bf16 on GPU, fp32 on CPU
    max_text_tokens: int = 128  #: truncate item and sequence texts to this many tokens
    image_size: int = 0  #: dual encoders / tiny models: square input side (0 = model default)
    max_pixels: int = 0  #: decoder VLM: cap on image pixels (0 = processor default)
    images_per_history: int = (
        1  #: k: images of the k most recent history items in a sequence prompt
    )
    item_prompt: str = (
        "{image}Title: {title}\n{text}\nSummarize the item in one word:"  #: decoder item prompt
    )
    #: decoder sequence prompt; {history} = one line per history item text, oldest first
    sequence_prompt: str = "{images}History:\n{history}\nSummarize the next item in one word:"

    def __post_init__(self) -> None:
        _check(bool(self.name), "embedder.name", "must not be empty")
        _check(self.lora_rank >= 1, "embedder.lora_rank", "must be >= 1")
        _check(0.0 <= self.lora_dropout < 1.0, "embedder.lora_dropout", "must be in [0, 1)")
        _check(self.max_text_tokens >= 8, "embedder.max_text_tokens", "must be >= 8")
        _check(self.images_per_history >= 0, "embedder.images_per_history", "must be >= 0")
        _check(self.image_size >= 0 and self.max_pixels >= 0, "embedder.image_size", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """VLM2Rec objective L = L_WPCL + beta * L_topo (METHOD.md §3-6)."""

    temperature: float = 0.05  #: tau of the InfoNCE terms
    alpha: float = 0.5  #: WPCL penalty strength (0 = plain contrastive)
    beta: float = 0.1  #: CRTR topology weight (0 = no topology term)
    topology_temperature: float = 0.1  #: tau_t of the relational distributions
    penalty_variant: Literal["reweight", "hard_negative"] = (
        "reweight"  #: reading of WPCL (METHOD.md §4)
    )
    weak_modality: Literal["batch", "sample"] = (
        "batch"  #: weak modality chosen per batch or per sample
    )
    topology_variant: Literal["strong_to_weak", "symmetric", "fused_anchor"] = (
        "strong_to_weak"  #: reading of CRTR (METHOD.md §5)
    )
    gather: bool = True  #: all-gather keys across data-parallel workers (global in-batch negatives)

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "loss.temperature", "must be > 0")
        _check(self.topology_temperature > 0, "loss.topology_temperature", "must be > 0")
        _check(self.alpha >= 0, "loss.alpha", "must be >= 0")
        _check(self.beta >= 0, "loss.beta", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-3  #: peak learning rate
    weight_decay: float = 0.01  #: AdamW decoupled weight decay
    warmup_ratio: float = 0.05  #: fraction of optimiser steps spent warming up linearly from 0
    min_lr_ratio: float = 0.1  #: cosine floor as a fraction of `lr`
    grad_clip: float = 1.0  #: max global grad norm (0 = no clipping)
    grad_accum_steps: int = 1  #: micro-batches per optimiser step

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", "must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(0 <= self.warmup_ratio < 1, "optim.warmup_ratio", "must be in [0, 1)")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        _check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
        _check(self.grad_accum_steps >= 1, "optim.grad_accum_steps", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    epochs: int = 20  #: maximum number of epochs
    batch_size: int = (
        256  #: global contrastive batch (sequences per micro-step, summed over workers)
    )
    early_stopping_patience: int = (
        0  #: stop after this many validations without improvement (0 = off)
    )
    keep_checkpoints: int = 2  #: epoch checkpoints kept on disk besides the best one
    device: Literal["auto", "cpu", "cuda"] = "auto"  #: auto = cuda when available
    log_every_steps: int = (
        0  #: report train metrics every N steps within an epoch (0 = per epoch only)
    )

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.batch_size >= 2, "train.batch_size", "must be >= 2 (in-batch negatives)")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience", "must be >= 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        _check(self.log_every_steps >= 0, "train.log_every_steps", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Full-ranking evaluation (METHOD.md §1, §7)."""

    metric: str = "val/ndcg@10"  #: model-selection metric (best epoch, early stopping, Tune)
    mode: Literal["max", "min"] = "max"  #: whether `metric` is maximised or minimised
    every_epochs: int = 1  #: validate every N epochs (and always after the last)
    val_users: int = (
        0  #: validate on a seeded subsample of this many users (0 = all; test uses all)
    )
    item_batch_size: int = 256  #: items per forward pass in the catalogue embedding pass
    user_batch_size: int = 256  #: users scored at once
    item_chunk: int = 8192  #: candidate items per score block (memory = user_batch x item_chunk)
    views: tuple[str, ...] = (
        "both",
        "text",
        "image",
    )  #: item views scored (single views feed diagnostics)
    #: items removed from a user's candidates: "all" = every item seen before the target (a
    #: repeated target is then a miss; {split}/repeat_rate says how often), "none" = rank everything
    exclude_seen: Literal["all", "none"] = "all"
    #: tied scores: "expected" = exact mean over random tie-breaking, "pessimistic" = ties rank ahead
    ties: Literal["expected", "pessimistic"] = "expected"
    #: also score each val/test target against this many sampled negatives (0 = off), fixed per
    #: split by the data's fingerprint: {split}/sampled{N}/hit@k beside the full ranking
    sampled_negatives: int = 0

    def __post_init__(self) -> None:
        _check(
            self.metric.startswith(("val/", "train/")),
            "eval.metric",
            "must be a val/ or train/ key",
        )
        _check(self.every_epochs >= 1, "eval.every_epochs", "must be >= 1")
        _check(self.val_users >= 0, "eval.val_users", "must be >= 0")
        _check(self.sampled_negatives >= 0, "eval.sampled_negatives", "must be >= 0")
        for name in ("item_batch_size", "user_batch_size", "item_chunk"):
            _check(getattr(self, name) >= 1, f"eval.{name}", "must be >= 1")
        bad = [v for v in self.views if v not in ("both", "text", "image")]
        _check(
            not bad and "both" in self.views,
            "eval.views",
            "must contain 'both' and only both/text/image",
        )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One VLM2Rec fine-tuning run."""

    seed: int = 0  #: global seed (model init, shuffling, subsampling)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)  #: dataset and sequences
    embedder: EmbedderConfig = dataclasses.field(default_factory=EmbedderConfig)  #: the VLM
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)  #: objective
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)  #: optimiser
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  #: loop
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)  #: evaluation


T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str = "") -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form.

    ``key`` is the value's dotted path; errors name it after ``where``, a place outside the
    config's own paths (``study.`` for a search-space file's ``[study]`` table).
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}{key}: expected a table, got {type(value).__name__}")
        return _from_mapping(tp, value, prefix=f"{key}.", where=where)  # type: ignore[arg-type]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}{key}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}{key}: expected a list, got {type(value).__name__}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}{key}: expected {_type_name(tp)}, got {type(value).__name__}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}{key}: expected {tp.__name__}, got bool")
    if not isinstance(value, tp):
        raise ConfigError(
            f"{where}{key}: expected {tp.__name__}, got {type(value).__name__} ({value!r})"
        )
    return value


def unknown_key(key: str, names: list[str], prefix: str = "", where: str = "") -> ConfigError:
    """The error for ``key``, which is none of ``names``: it names the key and suggests the closest
    names as they would be written in place (with the table's dotted ``prefix``; ``where``, a place
    outside the config's paths, comes before the key only)."""
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    return ConfigError(f"unknown key {where}{prefix}{key}{hint} (valid: {', '.join(names)})")


def _from_mapping(
    cls: type[T],
    data: Mapping[str, Any],
    prefix: str = "",
    where: str = "",
    preset: Mapping[str, Any] | None = None,
) -> T:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in (preset or {})]  # type: ignore[arg-type]
    names = [f.name for f in fields]
    kwargs: dict[str, Any] = dict(preset or {})
    for key, value in data.items():
        if key not in names:
            raise unknown_key(str(key), names, prefix, where)
        kwargs[key] = _coerce(value, hints[key], prefix + key, where)
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in kwargs:
            raise ConfigError(f"{where}{prefix}{f.name}: required")
    return cls(**kwargs)


@typing.overload
def from_dict(data: Mapping[str, Any]) -> RunConfig: ...
@typing.overload
def from_dict(
    data: Mapping[str, Any],
    cls: type[T],
    *,
    where: str = "",
    preset: Mapping[str, Any] | None = None,
) -> T: ...
def from_dict(
    data: Mapping[str, Any],
    cls: type[Any] = RunConfig,
    *,
    where: str = "",
    preset: Mapping[str, Any] | None = None,
) -> Any:
    """Build a config (a :class:`RunConfig` unless ``cls`` says otherwise) from nested dicts, strictly.

    Any frozen dataclass with annotated fields loads this way (the search-space file's tables do):
    ``where`` labels the keys in errors (see :func:`_coerce`), and ``preset`` gives fields that the
    caller knows and ``data`` may not set (a searched parameter's path is the name of its table).
    """
    return _from_mapping(cls, data, where=where, preset=preset)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) such that ``from_dict(to_dict(c)) == c``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = to_dict(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"alpha": 1}}`` -> ``{"loss.alpha": 1}``."""
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def apply_overrides(cfg: T, overrides: Mapping[str, Any]) -> T:
    """Return a copy of ``cfg`` with dotted-path values replaced (``{"loss.alpha": 0.5}``).

    Goes through :func:`from_dict`, so every override is type-checked and unknown paths fail.
    """
    data = to_dict(cfg)
    for path, value in overrides.items():
        node, cls, parts = data, type(cfg), path.split(".")
        for i, part in enumerate(parts):
            prefix = "".join(p + "." for p in parts[:i])
            hints = typing.get_type_hints(cls)
            if part not in hints:
                raise unknown_key(part, list(hints), prefix)
            if i == len(parts) - 1:
                node[part] = value
            elif not dataclasses.is_dataclass(hints[part]):
                raise ConfigError(f"{prefix}{part}: is a value, not a table (in {path!r})")
            else:
                node, cls = node[part], hints[part]
    return from_dict(data, type(cfg))


def parse_override(text: str) -> tuple[str, Any]:
    """``"loss.alpha=0.5"`` -> ``("loss.alpha", 0.5)``; the value is read as a TOML value,
    falling back to a plain string (``embedder.name=tiny-clip``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a run config from TOML (or from the JSON that studies write per trial), strictly."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: invalid {path.suffix.lstrip('.').upper() or 'TOML'}: {exc}"
        ) from None
    try:
        return apply_overrides(from_dict(data), overrides or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_hash(cfg: Any) -> str:
    """Stable 12-hex digest of the resolved config (sorted-key JSON)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
