"""The synthetic benchmark: determinism, knobs that do what they say, valid content, CLI hooks."""

from __future__ import annotations

import argparse
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm2rec.config import ConfigError, DataConfig, SyntheticConfig, to_dict
from vlm2rec.data.prepare import (
    add_prepare_arguments,
    ensure_dataset,
    prepare_from_args,
    prepare_synthetic,
)
from vlm2rec.data.schema import DatasetError, PreparedDataset, read_dataset
from vlm2rec.data.splits import make_splits
from vlm2rec.data.synthetic import (
    brand_word,
    build_synthetic,
    colour_word,
    item_attributes,
    shape_name,
    transition_maps,
)

# 32 items fill the 4 x 4 x 2 grid once; 8-pixel images keep the statistical builds fast.
SMALL = SyntheticConfig(users=60, items=32, shapes=4, brands=4, colours=2, image_size=8)
KEEP = dataclasses.replace(SMALL, transition="keep")
FILES = ("items.parquet", "interactions.parquet", "meta.json")


def _sequences(cfg: SyntheticConfig) -> list[np.ndarray]:
    """Each user's item ids in time order."""
    _, inter, _ = build_synthetic(cfg)
    users = inter.column("user_id").to_numpy()
    items = inter.column("item_id").to_numpy()
    return np.split(items, np.flatnonzero(np.diff(users)) + 1)


def _transitions(cfg: SyntheticConfig, attribute: int) -> tuple[np.ndarray, np.ndarray]:
    """(current, next) values of one attribute over all consecutive pairs of all users."""
    attrs = item_attributes(cfg)
    pairs = [(attrs[s[:-1], attribute], attrs[s[1:], attribute]) for s in _sequences(cfg)]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def _chi_square(cur: np.ndarray, nxt: np.ndarray, k: int) -> float:
    """Pearson chi-square statistic of independence of a k x k contingency table."""
    table = np.zeros((k, k))
    np.add.at(table, (cur, nxt), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def test_same_seed_gives_identical_bytes_and_fingerprint(tmp_path: Path) -> None:
    a = prepare_synthetic(SMALL, tmp_path / "a")
    b = prepare_synthetic(SMALL, tmp_path / "b")
    assert a.fingerprint == b.fingerprint
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    a = prepare_synthetic(SMALL, tmp_path / "a")
    b = prepare_synthetic(dataclasses.replace(SMALL, seed=1), tmp_path / "b")
    assert a.fingerprint != b.fingerprint
    for name in ("items.parquet", "interactions.parquet"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes(), name


def test_read_back_equals_what_was_built(tiny_dataset: PreparedDataset) -> None:
    again = read_dataset(tiny_dataset.path)
    assert again.items.equals(tiny_dataset.items)
    assert again.interactions.equals(tiny_dataset.interactions)
    assert again.meta == tiny_dataset.meta
    assert again.meta["name"] == "synthetic"
    assert again.meta["num_users"] == 60 and again.meta["num_items"] == 32


@pytest.mark.parametrize("transition", ["keep", "permutation"])
def test_zero_image_signal_makes_next_shape_independent(transition: str) -> None:
    cfg = dataclasses.replace(SMALL, users=1500, image_signal=0.0, transition=transition)
    cur, nxt = _transitions(cfg, 0)
    # chi-square, 9 degrees of freedom: 27.88 is the 0.001 critical value.
    assert _chi_square(cur, nxt, 4) < 27.88
    # The same statistic does detect dependence when the signal is on (the test has power).
    cur, nxt = _transitions(dataclasses.replace(cfg, image_signal=0.3), 0)
    assert _chi_square(cur, nxt, 4) > 100


@pytest.mark.parametrize("items", [32, 24])  # 24 < grid of 32: empty cells use the fallback
def test_full_image_signal_keeps_the_shape(items: int) -> None:
    # A user meets at most items / shapes items of one shape before the shape must change.
    cfg = dataclasses.replace(
        KEEP, items=items, image_signal=1.0, text_signal=0.0, max_length=items // 4
    )
    attrs = item_attributes(cfg)
    for seq in _sequences(cfg):
        assert len(set(attrs[seq, 0].tolist())) == 1
    # Brands still move (text_signal = 0), so the shape is not kept by accident.
    cur, nxt = _transitions(cfg, 1)
    assert np.mean(cur != nxt) > 0.3


def test_full_signals_follow_the_permutations() -> None:
    cfg = dataclasses.replace(SMALL, image_signal=1.0, text_signal=1.0, max_length=6)
    pi_shape, pi_brand = transition_maps(cfg)
    assert sorted(pi_shape.tolist()) == list(range(4)) and sorted(pi_brand.tolist()) == [0, 1, 2, 3]
    assert not (pi_shape == np.arange(4)).any() and not (pi_brand == np.arange(4)).any()
    for attribute, pi in ((0, pi_shape), (1, pi_brand)):
        cur, nxt = _transitions(cfg, attribute)
        # The drawn shape is always honoured; the brand only when an unseen item has both.
        share = np.mean(nxt == pi[cur])
        assert share == 1.0 if attribute == 0 else share > 0.9
        assert np.mean(nxt == cur) < 0.05  # the next item does not look like the last one


def test_transition_maps_are_seeded_derangements() -> None:
    a = transition_maps(dataclasses.replace(SMALL, shapes=8, brands=8, items=128))
    b = transition_maps(dataclasses.replace(SMALL, shapes=8, brands=8, items=128))
    c = transition_maps(dataclasses.replace(SMALL, shapes=8, brands=8, items=128, seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    keep = transition_maps(KEEP)
    assert all(np.array_equal(m, np.arange(4)) for m in keep)
    with pytest.raises(ConfigError, match=r"data\.synthetic\.transition: \"permutation\" needs"):
        dataclasses.replace(SMALL, shapes=1, items=8, max_length=8)


@pytest.mark.parametrize("cfg", [SMALL, KEEP, dataclasses.replace(SMALL, items=24, max_length=24)])
def test_no_user_meets_an_item_twice(cfg: SyntheticConfig) -> None:
    # max_length = items: the fallback chain must reach "any unseen item" and still never repeat.
    for seq in _sequences(cfg):
        assert len(set(seq.tolist())) == len(seq)
    _, inter, _ = build_synthetic(cfg)
    splits = make_splits(inter, history_length=3, min_length=3)
    assert not splits.val.repeats.any() and not splits.test.repeats.any()


def test_sequences_longer_than_the_catalogue_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"data\.synthetic\.max_length: must be <= items \(32\)"):
        dataclasses.replace(SMALL, max_length=33)


def test_text_and_colour_signals() -> None:
    cfg = dataclasses.replace(
        KEEP, items=128, max_length=8, image_signal=0.0, text_signal=1.0, colour_signal=1.0
    )  # 4 copies per cell
    attrs = item_attributes(cfg)
    # Brand and favourite colour are drawn every time; only a fallback (the user met every item
    # of the drawn shape, brand and colour) moves them, and the shape is honoured first.
    runs = [(attrs[s, 1], attrs[s, 2]) for s in _sequences(cfg)]
    assert np.mean([np.mean(b[1:] == b[:-1]) for b, _ in runs]) > 0.9
    assert np.mean([np.mean(c == np.bincount(c).argmax()) for _, c in runs]) > 0.9
    cur, nxt = _transitions(dataclasses.replace(cfg, text_signal=0.5), 1)
    assert 0.5 < np.mean(cur == nxt) < 0.70  # 0.5 + 0.5 / 4 = 0.625, a little less after fallbacks


def test_attributes_cycle_the_grid_under_a_permutation() -> None:
    attrs = item_attributes(SMALL)
    assert (attrs[0] == -1).all()
    cells = {tuple(a) for a in attrs[1:].tolist()}
    assert len(cells) == 32  # every (shape, brand, colour) exactly once
    assert not np.array_equal(attrs[1:, 0], np.arange(32) % 4)  # ids do not encode the shape


def test_interactions_are_valid(
    tiny_dataset: PreparedDataset, tiny_synthetic_config: SyntheticConfig
) -> None:
    cfg = tiny_synthetic_config
    inter = tiny_dataset.interactions
    users, items = inter.column("user_id").to_numpy(), inter.column("item_id").to_numpy()
    times = inter.column("timestamp").to_numpy()
    assert items.min() >= 1 and items.max() <= cfg.items
    uniq, counts = np.unique(users, return_counts=True)
    assert np.array_equal(uniq, np.arange(1, cfg.users + 1))
    assert counts.min() >= cfg.min_length and counts.max() <= cfg.max_length
    same_user = np.diff(users) == 0
    assert (np.diff(times)[same_user] > 0).all()


def test_images_decode_at_the_configured_size(tiny_dataset: PreparedDataset) -> None:
    images = tiny_dataset.items.column("image").to_pylist()
    assert len(set(images)) == len(images)  # per-item noise: no two items look identical
    for raw in images:
        img = Image.open(io.BytesIO(raw))
        assert img.format == "PNG" and img.size == (16, 16) and img.mode == "RGB"


@pytest.mark.parametrize(
    "cfg",
    [  # procedural shape names; procedural brand and colour words
        SyntheticConfig(users=5, items=60, shapes=20, brands=3, text_filler=6, image_size=8),
        SyntheticConfig(
            users=5, items=360, shapes=2, brands=15, colours=12, text_filler=2, image_size=8
        ),
    ],
)
def test_shape_never_appears_in_text(cfg: SyntheticConfig) -> None:
    items, _, _ = build_synthetic(cfg)
    words = [shape_name(k) for k in range(max(cfg.shapes, 12))] + ["shape", "poly"]
    attrs = item_attributes(cfg)
    for row in items.to_pylist():
        text = (row["title"] + " " + (row["text"] or "")).lower()
        assert not [w for w in words if w in text], (row["item_id"], text)
        brand, colour = (int(v) for v in attrs[row["item_id"], 1:])
        assert row["title"] == f"{brand_word(brand)} {colour_word(colour)}"  # no id, no shape
    assert len({brand_word(k) for k in range(cfg.brands)}) == cfg.brands
    assert len({colour_word(k) for k in range(cfg.colours)}) == cfg.colours


def test_filler_words_are_item_unique() -> None:
    cfg = dataclasses.replace(SMALL, text_filler=5)
    items, _, _ = build_synthetic(cfg)
    fillers = [t.split() for t in items.column("text").to_pylist()]
    assert all(len(f) == 5 for f in fillers)
    flat = [w for f in fillers for w in f]
    assert len(set(flat)) == len(flat)
    plain, _, _ = build_synthetic(SMALL)  # text_filler = 0: text is the attribute shortcut only
    assert plain.column("text").null_count == plain.num_rows
    assert len(set(plain.column("title").to_pylist())) == SMALL.brands * SMALL.colours


def test_ensure_dataset_builds_reuses_and_refuses(tmp_path: Path) -> None:
    cfg = DataConfig(path=str(tmp_path / "ds"), synthetic=SMALL)
    built = ensure_dataset(cfg)
    assert built.meta["knobs"] == to_dict(SMALL)
    mtime = (tmp_path / "ds" / "items.parquet").stat().st_mtime_ns
    assert ensure_dataset(cfg).fingerprint == built.fingerprint
    assert (tmp_path / "ds" / "items.parquet").stat().st_mtime_ns == mtime  # read, not rebuilt
    other = dataclasses.replace(cfg, synthetic=dataclasses.replace(SMALL, users=61))
    with pytest.raises(
        DatasetError, match=r"meta\.json.*data\.synthetic\.users: folder 60 vs config 61"
    ):
        ensure_dataset(other)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary folders left behind


def test_ensure_dataset_missing_or_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert ensure_dataset(DataConfig(path=str(tmp_path / "empty"), synthetic=SMALL)).num_items == 32
    no_build = DataConfig(path=str(tmp_path / "absent"), prepare_if_missing=False, synthetic=SMALL)
    with pytest.raises(DatasetError, match=r"absent.*does not exist"):
        ensure_dataset(no_build)


def test_cli_hooks_parse_every_knob(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser, "synthetic")
    args = parser.parse_args(
        ["--out", str(tmp_path / "cli"), "--users", "12", "--items", "10", "--image-signal", "0.5",
         "--min-length", "3", "--max-length", "4", "--image-size", "8", "--text-filler", "2"]
    )  # fmt: skip
    ds = prepare_from_args(args)
    knobs = read_dataset(tmp_path / "cli").meta["knobs"]
    expected = dataclasses.replace(
        SyntheticConfig(), users=12, items=10, image_signal=0.5, min_length=3, max_length=4,
        image_size=8, text_filler=2,
    )  # fmt: skip
    assert knobs == to_dict(expected) and ds.meta["num_users"] == 12
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --out is required


def test_default_build_is_fast() -> None:
    import time

    start = time.perf_counter()
    items, inter, _ = build_synthetic(SyntheticConfig())
    elapsed = time.perf_counter() - start
    assert items.num_rows == 256 and 2000 * 5 <= inter.num_rows <= 2000 * 20
    assert elapsed < 10.0, f"default synthetic build took {elapsed:.1f} s"


def test_ensure_dataset_loses_a_race_gracefully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vlm2rec.data.prepare as prepare

    target = tmp_path / "ds"
    real_prepare = prepare.prepare_synthetic

    def racing_prepare(cfg: SyntheticConfig, out: str | Path) -> PreparedDataset:
        real_prepare(cfg, target)  # another worker finishes first, between our check and rename
        return real_prepare(cfg, out)

    monkeypatch.setattr(prepare, "prepare_synthetic", racing_prepare)
    ds = ensure_dataset(DataConfig(path=str(target), synthetic=SMALL))
    assert ds.path == target and ds.meta["knobs"] == to_dict(SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # our temporary copy was discarded


def test_cli_prepare_synthetic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vlm2rec.cli as cli

    # Only the synthetic source: the command must not depend on the other converters' modules.
    monkeypatch.setattr(cli, "PREPARE_SOURCES", {"synthetic": cli.PREPARE_SOURCES["synthetic"]})
    out = tmp_path / "s"
    assert (
        cli.main(["prepare", "synthetic", "--out", str(out), "--users", "30", "--image-size", "8"])
        == 0
    )
    ds = read_dataset(out)
    assert ds.meta["num_users"] == 30 and ds.meta["knobs"]["users"] == 30
    assert f"fingerprint {ds.fingerprint[:12]}" in capsys.readouterr().out
