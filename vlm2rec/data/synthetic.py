r"""The built-in offline synthetic multimodal benchmark (knobs: :class:`vlm2rec.config.SyntheticConfig`).

Generative model
----------------
**Items.** Grid position :math:`p = 0..N-1` cycles through the attribute grid

.. math:: \text{shape}(p) = p \bmod S,\quad \text{brand}(p) = \lfloor p/S \rfloor \bmod B,\quad
          \text{colour}(p) = \lfloor p/(SB) \rfloor \bmod C

and a seeded permutation maps positions to item ids :math:`1..N` (so an id says nothing about its
attributes). The three attributes reach the two modalities differently:

* **shape** (image only): drawn with PIL (circle, square, triangle, star, cross, diamond, ring, bar,
  hexagon, crescent, arrow, half-disc, then procedural star polygons), at a jittered position, size
  and rotation, on a seeded background with per-pixel texture noise, so that copies differ;
* **brand** (text only): a brand word in the title and text;
* **colour** (both): the fill colour of the shape and the colour word in the text.

Title ``"<Brand> <colour>"``; text = ``text_filler`` item-unique pseudo-words (null when
``text_filler = 0``). Texts are kept this short on purpose: the tiny models tokenise bytes, and every
byte is a token in every training step. No text ever names, numbers or encodes the shape (a test
checks it), and with ``text_filler = 0`` items of one (brand, colour) cell have identical text.

**Users** :math:`u = 1..U`: a favourite colour :math:`f_u`; a length :math:`n_u \sim
\mathcal{U}\{\text{min\_length}, \dots, \text{max\_length}\}`; increasing timestamps. Given the current
item's shape :math:`s_t` and brand :math:`b_t` (the first item draws them uniformly):

.. math:: s_{t+1} = \begin{cases} s_t & \text{w.p. } \rho_I \\ \mathcal{U}(\text{shapes}) &
          \text{otherwise}\end{cases}, \quad b_{t+1}\ \text{likewise with}\ \rho_T, \quad
          c_{t+1} = \begin{cases} f_u & \text{w.p. } \rho_C \\ \mathcal{U}(\text{colours}) &
          \text{otherwise}\end{cases}

and the item is drawn uniformly from the grid cell :math:`(s_{t+1}, b_{t+1}, c_{t+1})`. When
``items`` is smaller than the grid, values without any item are never drawn, and an empty cell falls
back to the items with the same shape and brand, else the same shape and colour, else the same
shape: the shape is always honoured, so ``image_signal = 0`` makes the next shape independent of the
history and ``image_signal = 1`` keeps it forever.

=====================  ===================  ==============================================
symbol                 field                meaning
=====================  ===================  ==============================================
:math:`N, U`           ``items, users``     catalogue size, number of users
:math:`S, B, C`        ``shapes, brands,``  attribute cardinalities
                       ``colours``
:math:`\rho_I`         ``image_signal``     P(keep shape): next-item signal only the image carries
:math:`\rho_T`         ``text_signal``      P(keep brand): next-item signal only the text carries
:math:`\rho_C`         ``colour_signal``    P(favourite colour): signal both modalities carry
=====================  ===================  ==============================================

Same knobs and seed give byte-identical Parquet files (and equal fingerprints).
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import io
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw
from tqdm import tqdm

from vlm2rec.config import DataConfig, SyntheticConfig, to_dict
from vlm2rec.data.schema import (
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    DatasetError,
    PreparedDataset,
    read_dataset,
    write_dataset,
)

__all__ = [
    "GENERATOR_VERSION",
    "add_prepare_arguments",
    "brand_word",
    "build_synthetic",
    "colour_word",
    "ensure_dataset",
    "item_attributes",
    "prepare_from_args",
    "prepare_synthetic",
    "shape_name",
]

GENERATOR_VERSION = 2  #: bump when the generator changes, so stale folders are refused
_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "ring")
_SHAPES += ("bar", "hexagon", "crescent", "arrow", "halfdisc")
_COLOURS = {
    "red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (235, 210, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "pink": (240, 120, 180),
    "cyan": (40, 200, 210), "brown": (130, 80, 40), "white": (250, 250, 250), "black": (15, 15, 15),
}  # fmt: skip
_BRANDS: tuple[str, ...] = (
    "Acme",
    "Lumo",
    "Vexa",
    "Nordik",
    "Quill",
    "Tamsin",
    "Opaline",
    "Zephyr",
    "Kestrel",
)
_BRANDS += ("Mirela", "Halden", "Pontus")
_CONSONANTS, _VOWELS = "bdfgklmnpstvz", "aeiou"
_BASE_EPOCH = 1_600_000_000  # timestamps start in 2020, spread over a year, gaps up to a week


def shape_name(k: int) -> str:
    """Name of shape ``k`` (documentation and diagnostics only: never written into any text)."""
    return _SHAPES[k] if k < len(_SHAPES) else f"polystar{k}"


def colour_word(k: int) -> str:
    """The colour word of colour ``k`` (procedural ``hue<k>`` beyond the named palette)."""
    return list(_COLOURS)[k] if k < len(_COLOURS) else f"hue{k}"


def _colour_rgb(k: int) -> tuple[int, int, int]:
    if k < len(_COLOURS):
        return _COLOURS[colour_word(k)]
    r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.85, 0.9)  # golden-ratio hues stay apart
    return round(r * 255), round(g * 255), round(b * 255)


def _is_clean(word: str) -> bool:
    """True if ``word`` contains no shape or colour name (text must not leak or blur them)."""
    low = word.lower()
    return not any(s in low for s in (*_SHAPES, *list(_COLOURS), "poly", "hue"))


def _pseudo_word(code: int, syllables: int) -> str:
    out = []
    for _ in range(syllables):
        code, syl = divmod(code, len(_CONSONANTS) * len(_VOWELS))
        out.append(_CONSONANTS[syl // len(_VOWELS)] + _VOWELS[syl % len(_VOWELS)])
    return "".join(out)


def brand_word(k: int) -> str:
    """The brand word of brand ``k`` (deterministic pseudo-words beyond the named list)."""
    if k < len(_BRANDS):
        return _BRANDS[k]
    clean = (w for c in range(10**6) if _is_clean(w := _pseudo_word(c + 1000, 3)))
    return next(w for i, w in enumerate(clean) if i == k - len(_BRANDS)).capitalize()


def item_attributes(cfg: SyntheticConfig) -> np.ndarray:
    """``[N + 1, 3]`` int64 (shape, brand, colour) per item id; row 0 (padding) is ``-1``."""
    p = np.arange(cfg.items, dtype=np.int64)
    grid = np.stack([p % cfg.shapes, (p // cfg.shapes) % cfg.brands], axis=1)
    grid = np.concatenate([grid, ((p // (cfg.shapes * cfg.brands)) % cfg.colours)[:, None]], axis=1)
    perm = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])).permutation(cfg.items)
    attrs = np.full((cfg.items + 1, 3), -1, dtype=np.int64)
    attrs[1 + perm] = grid  # grid position p becomes item id 1 + perm[p]
    return attrs


def _star(n_points: int, inner: float, phase: float = 0.0) -> list[tuple[float, float]]:
    """Unit star with ``n_points`` tips and inner radius ``inner``, first tip at angle ``phase``."""
    radii = [1.0 if i % 2 == 0 else inner for i in range(2 * n_points)]
    angles = [math.pi * i / n_points + phase for i in range(2 * n_points)]
    return [(r * math.sin(a), -r * math.cos(a)) for r, a in zip(radii, angles, strict=True)]


def _regular(n: int, phase: float = 0.0) -> list[tuple[float, float]]:
    # A star whose inner vertices sit on the edge midpoints (radius cos(pi/n)) is the regular n-gon.
    return _star(n, math.cos(math.pi / n), phase)


_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": _regular(4, math.pi / 4),
    "triangle": _regular(3),
    "star": _star(5, 0.42),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
              (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "diamond": [(0, -1), (0.65, 0), (0, 1), (-0.65, 0)],
    "bar": [(-1, -0.28), (1, -0.28), (1, 0.28), (-1, 0.28)],
    "hexagon": _regular(6),
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)],
}  # fmt: skip


def _outline(k: int) -> list[tuple[float, float]]:
    """Unit-radius polygon of a polygonal shape ``k`` (procedural stars beyond the named list)."""
    name = shape_name(k)
    if name in _POLYGONS:
        return _POLYGONS[name]
    j = k - len(_SHAPES)  # 3..8 tips x (thin, fat, thin upside down): 18 outlines, then repeats
    n, variant = 3 + j % 6, (j // 6) % 3
    return _star(n, (0.25, 0.4, 0.25)[variant], math.pi / n if variant == 2 else 0.0)


def _draw(draw: ImageDraw.ImageDraw, k: int, centre: tuple[float, float], radius: float,
          angle: float, fill: tuple[int, int, int], background: tuple[int, int, int]) -> None:  # fmt: skip
    """Draw shape ``k`` (a rigid shape rotated by ``angle``) on ``draw``."""
    (cx, cy), r, name = centre, radius, shape_name(k)
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "ring":
        draw.ellipse(box, outline=fill, width=max(1, round(r * 0.38)))
    elif name == "crescent":  # a disc with an offset background disc bitten out of it
        draw.ellipse(box, fill=fill)
        dx, dy = 0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle)
        draw.ellipse((cx - r + dx, cy - r + dy, cx + r + dx, cy + r + dy), fill=background)
    elif name == "halfdisc":
        start = math.degrees(angle)
        draw.pieslice(box, start, start + 180, fill=fill)
    else:
        cos, sin = math.cos(angle), math.sin(angle)
        pts = [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in _outline(k)]
        draw.polygon(pts, fill=fill)


def _render(shape: int, colour: int, size: int, rng: np.random.Generator) -> bytes:
    """PNG bytes of one item: jittered shape on a noisy background (4x supersampled, then noised)."""
    big = 4 * size
    grey = int(rng.integers(120, 200))
    r, g, b = (int(v) for v in np.clip(grey + rng.integers(-20, 21, 3), 0, 255))
    background = (r, g, b)
    img = Image.new("RGB", (big, big), background)
    centre = (big * (0.5 + rng.uniform(-0.08, 0.08)), big * (0.5 + rng.uniform(-0.08, 0.08)))
    radius = big * rng.uniform(0.28, 0.36)
    angle = math.radians(rng.uniform(-15, 15))
    _draw(ImageDraw.Draw(img), shape, centre, radius, angle, _colour_rgb(colour), background)
    pixels = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)
    noisy = np.clip(pixels + rng.normal(0.0, 8.0, pixels.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _filler_words(n_items: int, per_item: int, rng: np.random.Generator) -> list[list[str]]:
    """``per_item`` distinct clean pseudo-words per item, no word shared by two items."""
    if per_item == 0:
        return [[] for _ in range(n_items)]
    space, need = (len(_CONSONANTS) * len(_VOWELS)) ** 4, n_items * per_item
    codes = rng.choice(space, size=min(space, 2 * need + 64), replace=False)
    words = [w for w in (_pseudo_word(int(c), 4) for c in codes) if _is_clean(w)][:need]
    if len(words) < need:
        raise ValueError(f"data.synthetic.text_filler: cannot make {need} distinct filler words")
    return [words[i * per_item : (i + 1) * per_item] for i in range(n_items)]


def _items_table(cfg: SyntheticConfig, attrs: np.ndarray, rng: np.random.Generator) -> pa.Table:
    fillers = _filler_words(cfg.items, cfg.text_filler, rng)
    titles, texts, images = [], [], []
    for item in tqdm(range(1, cfg.items + 1), desc="synthetic images", delay=2.0, leave=False):
        shape, brand, colour = (int(v) for v in attrs[item])
        words = (brand_word(brand), colour_word(colour))
        titles.append(f"{words[0]} {words[1]}")
        texts.append(" ".join(fillers[item - 1]) or None)
        images.append(_render(shape, colour, cfg.image_size, rng))
    ids = list(range(1, cfg.items + 1))
    source = [f"synthetic-{i:06d}" for i in ids]
    columns = {"item_id": ids, "title": titles, "text": texts, "image": images, "source_id": source}
    return pa.table(columns, schema=ITEMS_SCHEMA)


def _cell_candidates(attrs: np.ndarray, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr [S*B*C + 1], item ids)`` of the items drawn for each grid cell (with fallback)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for item in range(1, len(attrs)):
        s, b, c = (int(v) for v in attrs[item])
        for key in ((s, b, c), (s, b, None), (s, None, c), (s, None, None)):
            groups.setdefault(key, []).append(item)
    indptr, members = [0], []
    for s in range(cfg.shapes):
        for b in range(cfg.brands):
            for c in range(cfg.colours):
                keys = ((s, b, c), (s, b, None), (s, None, c), (s, None, None))
                members += next((groups[k] for k in keys if k in groups), [])
                indptr.append(len(members))
    return np.asarray(indptr, dtype=np.int64), np.asarray(members, dtype=np.int64)


def _choose(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return values[rng.integers(0, len(values), size)]


def _interactions_table(
    cfg: SyntheticConfig, attrs: np.ndarray, rng: np.random.Generator
) -> pa.Table:
    """Simulate all users step by step, vectorised over users (see the module docstring)."""
    present = [np.unique(attrs[1:, j]) for j in range(3)]  # values that own at least one item
    indptr, members = _cell_candidates(attrs, cfg)
    n_users, steps = cfg.users, cfg.max_length
    favourite = _choose(present[2], n_users, rng)
    seq = np.zeros((n_users, steps), dtype=np.int64)
    shape, brand = _choose(present[0], n_users, rng), _choose(present[1], n_users, rng)
    for t in range(steps):
        if t > 0:
            cur = attrs[seq[:, t - 1]]
            keep_s = rng.random(n_users) < cfg.image_signal
            keep_b = rng.random(n_users) < cfg.text_signal
            shape = np.where(keep_s, cur[:, 0], _choose(present[0], n_users, rng))
            brand = np.where(keep_b, cur[:, 1], _choose(present[1], n_users, rng))
        fav = rng.random(n_users) < cfg.colour_signal
        colour = np.where(fav, favourite, _choose(present[2], n_users, rng))
        cell = (shape * cfg.brands + brand) * cfg.colours + colour
        lo, count = indptr[cell], indptr[cell + 1] - indptr[cell]
        seq[:, t] = members[lo + (rng.random(n_users) * count).astype(np.int64)]
    lengths = rng.integers(cfg.min_length, cfg.max_length + 1, n_users)
    start = _BASE_EPOCH + rng.integers(0, 365 * 86400, n_users)
    times = start[:, None] + np.cumsum(rng.integers(60, 7 * 86400, (n_users, steps)), axis=1)
    # [U, max_length] mask of real steps; boolean indexing is row-major, so users stay in order.
    real = np.arange(steps)[None, :] < lengths[:, None]
    users = np.broadcast_to(np.arange(1, n_users + 1)[:, None], seq.shape)
    columns = {"user_id": users[real], "item_id": seq[real], "timestamp": times[real]}
    return pa.table(columns, schema=INTERACTIONS_SCHEMA)


def _meta(cfg: SyntheticConfig) -> dict[str, Any]:
    return {
        "name": "synthetic",
        "source": "vlm2rec.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "knobs": to_dict(cfg),
        "k_core": None,
        "vocabulary": {
            "shapes": [shape_name(k) for k in range(cfg.shapes)],
            "brands": [brand_word(k) for k in range(cfg.brands)],
            "colours": [colour_word(k) for k in range(cfg.colours)],
        },
    }


def build_synthetic(cfg: SyntheticConfig) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """``(items, interactions, meta)`` of the benchmark; deterministic in ``cfg``."""
    attrs = item_attributes(cfg)
    items = _items_table(cfg, attrs, np.random.default_rng(np.random.SeedSequence([cfg.seed, 1])))
    users_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2]))
    return items, _interactions_table(cfg, attrs, users_rng), _meta(cfg)


def prepare_synthetic(cfg: SyntheticConfig, out: str | Path) -> PreparedDataset:
    """Build the benchmark and write it as a prepared dataset folder ``out``."""
    items, interactions, meta = build_synthetic(cfg)
    return write_dataset(out, items, interactions, meta)


def _check_knobs(ds: PreparedDataset, cfg: SyntheticConfig) -> None:
    meta, want = ds.meta, to_dict(cfg)
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise DatasetError(
            f"{ds.path / 'meta.json'}: synthetic generator_version {meta.get('generator_version')} "
            f"!= {GENERATOR_VERSION}; delete the folder to rebuild it"
        )
    got = meta.get("knobs", {})
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if diff:
        text = ", ".join(
            f"data.synthetic.{k}: folder {a!r} vs config {b!r}" for k, (a, b) in diff.items()
        )
        raise DatasetError(
            f"{ds.path / 'meta.json'}: the synthetic dataset there was built with other knobs ({text}); "
            "point data.path elsewhere or delete the folder"
        )


def ensure_dataset(data_cfg: DataConfig) -> PreparedDataset:
    """Read ``data_cfg.path``; build the synthetic benchmark there first if the folder is missing
    (or empty) and ``prepare_if_missing``. A synthetic folder built with other knobs is an error.

    Safe when several processes race: each builds into a private temporary sibling and renames it
    into place; the losers discard theirs and read the winner's.
    """
    path = Path(data_cfg.path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        if not data_cfg.prepare_if_missing:
            raise DatasetError(
                f"{path}: dataset folder does not exist (data.prepare_if_missing = false)"
            )
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        prepare_synthetic(data_cfg.synthetic, tmp)
        try:
            os.rename(tmp, path)  # atomic; replaces only a missing or empty folder
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    ds = read_dataset(path)
    if ds.meta.get("name") == "synthetic":
        _check_knobs(ds, data_cfg.synthetic)
    return ds


_FLAG_HELP = {
    "seed": "generator seed (same knobs + seed = same bytes)",
    "image_signal": "P(next item keeps the shape): signal only the image carries",
    "text_signal": "P(next item keeps the brand): signal only the text carries",
    "colour_signal": "P(next item has the user's favourite colour): signal both carry",
    "text_filler": "item-unique filler words per text (0 = text is a pure attribute shortcut)",
    "image_size": "side of the square PNG images in pixels",
}


def add_prepare_arguments(parser: argparse.ArgumentParser, source: str) -> None:
    """Flags of ``prepare synthetic``: ``--out`` and one flag per :class:`SyntheticConfig` knob."""
    del source  # one source only
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    for field in dataclasses.fields(SyntheticConfig):
        default = getattr(SyntheticConfig(), field.name)
        flag = "--" + field.name.replace("_", "-")
        help_text = _FLAG_HELP.get(field.name, field.name.replace("_", " "))
        parser.add_argument(
            flag, type=type(default), default=default, help=f"{help_text} (default {default})"
        )


def prepare_from_args(args: argparse.Namespace) -> PreparedDataset:
    """Run ``prepare synthetic`` from parsed flags."""
    cfg = SyntheticConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig)}
    )
    return prepare_synthetic(cfg, args.out)
