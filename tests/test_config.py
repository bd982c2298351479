"""Strictness and round-trips of vlm2rec.config."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vlm2rec.config import (
    ConfigError,
    RunConfig,
    SyntheticConfig,
    apply_overrides,
    config_hash,
    flatten,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]
CANONICAL = [
    "seed",
    "data.path",
    "embedder.name",
    "loss.alpha",
    "loss.beta",
    "loss.temperature",
    "loss.topology_temperature",
    "loss.penalty_variant",
    "loss.topology_variant",
    "optim.lr",
    "train.epochs",
    "train.batch_size",
]


def test_canonical_keys_exist() -> None:
    flat = flatten(to_dict(RunConfig()))
    for key in CANONICAL:
        assert key in flat, key


def test_round_trip_default_and_hash_stable() -> None:
    cfg = RunConfig()
    assert from_dict(to_dict(cfg)) == cfg
    assert config_hash(cfg) == config_hash(from_dict(to_dict(cfg)))
    assert config_hash(cfg) != config_hash(apply_overrides(cfg, {"loss.alpha": 1.0}))


@given(
    alpha=st.floats(0, 10),
    beta=st.floats(0, 10),
    tau=st.floats(1e-3, 1.0),
    epochs=st.integers(1, 50),
    variant=st.sampled_from(["reweight", "hard_negative"]),
)
def test_overrides_round_trip(
    alpha: float, beta: float, tau: float, epochs: int, variant: str
) -> None:
    cfg = apply_overrides(
        RunConfig(),
        {
            "loss.alpha": alpha,
            "loss.beta": beta,
            "loss.temperature": tau,
            "train.epochs": epochs,
            "loss.penalty_variant": variant,
        },
    )
    assert (cfg.loss.alpha, cfg.loss.beta, cfg.train.epochs) == (alpha, beta, epochs)
    assert from_dict(to_dict(cfg)) == cfg


def test_unknown_key_names_it_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"unknown key loss\.alpah; did you mean loss\.alpha"):
        from_dict({"loss": {"alpah": 1.0}})
    with pytest.raises(ConfigError, match="unknown key trian; did you mean train"):
        apply_overrides(RunConfig(), {"trian.epochs": 3})


def test_wrong_type_names_key_expected_and_given() -> None:
    with pytest.raises(ConfigError, match=r"loss\.alpha: expected float, got str"):
        from_dict({"loss": {"alpha": "big"}})
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got bool"):
        from_dict({"train": {"epochs": True}})
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got float"):
        from_dict({"train": {"epochs": 2.5}})
    with pytest.raises(ConfigError, match=r"loss: expected a table"):
        from_dict({"loss": 3})


def test_int_accepted_for_float_and_lists_become_tuples() -> None:
    cfg = from_dict({"loss": {"alpha": 1}, "embedder": {"lora_target_modules": ["q_proj"]}})
    assert isinstance(cfg.loss.alpha, float) and cfg.embedder.lora_target_modules == ("q_proj",)


def test_literal_and_range_checks() -> None:
    with pytest.raises(ConfigError, match="penalty_variant: expected one of"):
        apply_overrides(RunConfig(), {"loss.penalty_variant": "soft"})
    with pytest.raises(ConfigError, match=r"loss\.temperature: must be > 0"):
        apply_overrides(RunConfig(), {"loss.temperature": 0.0})
    with pytest.raises(ConfigError, match=r"loss\.alpha: must be >= 0"):
        apply_overrides(RunConfig(), {"loss.alpha": -1.0})
    with pytest.raises(ConfigError, match=r"loss\.alpha: is a value, not a table"):
        apply_overrides(RunConfig(), {"loss.alpha.x": 1})


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().loss.alpha = 2.0  # type: ignore[misc]


def test_parse_override_reads_toml_values_and_plain_strings() -> None:
    assert parse_override("loss.alpha=1e-3") == ("loss.alpha", 0.001)
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("embedder.name=tiny-clip") == ("embedder.name", "tiny-clip")
    assert parse_override("loss.gather=false") == ("loss.gather", False)
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("loss.alpha")


def test_load_config_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[loss]\nalpah = 1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown key loss\.alpah"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_shipped_base_configs_load() -> None:
    for path in sorted((REPO / "search_spaces" / "base").glob("*.toml")):
        cfg = load_config(path)
        assert from_dict(to_dict(cfg)) == cfg


def test_every_field_is_documented() -> None:
    """Each dataclass field carries a one-line ``#:`` comment (before, on or closing its line)."""
    classes = [
        RunConfig,
        SyntheticConfig,
        *(
            type(getattr(RunConfig(), n))
            for n in ("data", "embedder", "loss", "optim", "train", "eval")
        ),
    ]
    for cls in classes:
        lines = inspect.getsource(cls).splitlines()
        for f in dataclasses.fields(cls):
            start = next(i for i, ln in enumerate(lines) if ln.strip().startswith(f"{f.name}:"))
            assert any("#:" in ln for ln in lines[start - 1 : start + 3]), (
                f"{cls.__name__}.{f.name}"
            )


def test_load_config_reads_the_json_a_study_writes(tmp_path: Path) -> None:
    cfg = apply_overrides(RunConfig(), {"loss.alpha": 0.25, "embedder.name": "tiny-clip"})
    path = tmp_path / "trial.json"
    path.write_text(json.dumps(to_dict(cfg)))
    assert load_config(path) == cfg
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"trial\.json: invalid JSON"):
        load_config(path)
