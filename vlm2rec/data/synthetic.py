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

.. math:: s_{t+1} = \begin{cases} \pi_I(s_t) & \text{w.p. } \rho_I \\ \mathcal{U}(\text{shapes}) &
          \text{otherwise}\end{cases}, \quad b_{t+1}\ \text{likewise with}\ \pi_T, \rho_T, \quad
          c_{t+1} = \begin{cases} f_u & \text{w.p. } \rho_C \\ \mathcal{U}(\text{colours}) &
          \text{otherwise}\end{cases}

With ``transition = "permutation"`` (default) :math:`\pi_I` and :math:`\pi_T` are seeded
permutations without fixed points (:func:`transition_maps`), so the next item does not look like the
last one and a model must learn the transitions instead of copying; ``"keep"`` makes them the
identity (the next item resembles the last).

The item is drawn uniformly among the user's **unseen** items of the grid cell :math:`(s_{t+1},
b_{t+1}, c_{t+1})`, so a user never meets an item twice and no held-out target repeats its history.
A cell without an unseen item falls back to the unseen items with the same shape and brand, else the
same shape and colour, else the same shape, else any unseen item (:data:`FALLBACK`): the shape is
honoured whenever possible, so ``image_signal = 0`` makes the next shape independent of the history.
When ``items`` is smaller than the grid, values without any item are never drawn.

=====================  ===================  ==============================================
symbol                 field                meaning
=====================  ===================  ==============================================
:math:`N, U`           ``items, users``     catalogue size, number of users
:math:`S, B, C`        ``shapes, brands,``  attribute cardinalities
                       ``colours``
:math:`\rho_I`         ``image_signal``     P(shape follows :math:`\pi_I`): signal only the image carries
:math:`\rho_T`         ``text_signal``      P(brand follows :math:`\pi_T`): signal only the text carries
:math:`\pi_I, \pi_T`   ``transition``       permutations of shapes / brands (or the identity)
:math:`\rho_C`         ``colour_signal``    P(favourite colour): signal both modalities carry
=====================  ===================  ==============================================

Same knobs and seed give byte-identical Parquet files (and equal fingerprints).
"""

from __future__ import annotations

import colorsys
import io
import math
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw
from tqdm import tqdm

from vlm2rec.config import SyntheticConfig, to_dict
from vlm2rec.data.schema import (
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
)

__all__ = [
    "FALLBACK",
    "GENERATOR_VERSION",
    "brand_word",
    "build_synthetic",
    "colour_word",
    "item_attributes",
    "level_keys",
    "shape_name",
    "transition_maps",
]

GENERATOR_VERSION = 3  #: bump when the generator changes, so stale folders are refused
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


#: attribute columns (shape 0, brand 1, colour 2) an item must share with the drawn cell, level by
#: level: the cell, then same shape and brand, same shape and colour, same shape, anything
FALLBACK: tuple[tuple[int, ...], ...] = ((0, 1, 2), (0, 1), (0, 2), (0,), ())


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` without fixed points (rejection; n >= 2)."""
    while True:  # P(no fixed point) -> 1/e: about 2.7 draws
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def transition_maps(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(pi_I [S], pi_T [B])``: where a shape / brand moves when it follows the transition.

    Seeded permutations without fixed points over the values that own an item (``transition =
    "permutation"``), or the identity (``"keep"``); ``-1`` for values without items.
    """
    attrs = item_attributes(cfg)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 3]))
    maps = []
    for col, size in ((0, cfg.shapes), (1, cfg.brands)):
        values = np.unique(attrs[1:, col])
        out = np.full(size, -1, dtype=np.int64)
        # SyntheticConfig guarantees >= 2 values for "permutation"
        perm = (
            np.arange(len(values)) if cfg.transition == "keep" else _derangement(len(values), rng)
        )
        out[values] = values[perm]
        maps.append(out)
    return maps[0], maps[1]


def level_keys(attrs: np.ndarray, cols: tuple[int, ...], cfg: SyntheticConfig) -> np.ndarray:
    """Mixed-radix key of the attribute columns ``cols`` of each row of ``attrs [..., 3]``."""
    key = np.zeros(attrs.shape[:-1], dtype=np.int64)
    for c in cols:
        key = key * (cfg.shapes, cfg.brands, cfg.colours)[c] + attrs[..., c]
    return key


def _fallback_index(attrs: np.ndarray, cfg: SyntheticConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """``(indptr per level, members)``: the item ids under key ``k`` of level ``l`` are
    ``members[indptr[l][k] : indptr[l][k + 1]]`` (one CSR per :data:`FALLBACK` level, one array)."""
    indptrs, members, offset = [], [], 0
    for cols in FALLBACK:
        key = level_keys(attrs[1:], cols, cfg)  # [N]
        n_keys = int(np.prod([(cfg.shapes, cfg.brands, cfg.colours)[c] for c in cols]))
        indptrs.append(
            offset + np.concatenate([[0], np.cumsum(np.bincount(key, minlength=n_keys))])
        )
        members.append(1 + np.argsort(key, kind="stable"))
        offset += len(key)
    return indptrs, np.concatenate(members).astype(np.int64)


def _draw_unseen(
    drawn: np.ndarray, past: np.ndarray, attrs: np.ndarray, cfg: SyntheticConfig,
    index: tuple[list[np.ndarray], np.ndarray], rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """``[U]`` items: uniform among each user's unseen members of its first non-empty level.

    ``drawn [U, 3]`` is the drawn (shape, brand, colour) and ``past [U, t]`` the items met so far;
    they are distinct by construction, so a level's unseen count is its size minus its matches.
    """
    indptrs, members = index
    n_users = len(drawn)
    lo, size = np.zeros(n_users, dtype=np.int64), np.zeros(n_users, dtype=np.int64)
    todo = np.ones(n_users, dtype=bool)  # users still looking for a level with an unseen item
    for cols, indptr in zip(FALLBACK, indptrs, strict=True):
        key = level_keys(drawn, cols, cfg)  # [U]
        met = (level_keys(attrs[past], cols, cfg) == key[:, None]).sum(axis=1)  # [U]
        n = indptr[key + 1] - indptr[key]
        free = todo & (n > met)
        lo[free], size[free] = indptr[key[free]], n[free]
        todo &= ~free
    # The last level is the whole catalogue and max_length <= items, so every user found one.
    out = np.zeros(n_users, dtype=np.int64)
    pending = np.arange(n_users)
    while len(pending):  # rejection: uniform over a level's members, redrawn while already met
        cand = members[lo[pending] + (rng.random(len(pending)) * size[pending]).astype(np.int64)]
        fresh = ~(past[pending] == cand[:, None]).any(axis=1)
        out[pending[fresh]] = cand[fresh]
        pending = pending[~fresh]
    return out


def _choose(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return values[rng.integers(0, len(values), size)]


def _interactions_table(
    cfg: SyntheticConfig, attrs: np.ndarray, rng: np.random.Generator
) -> pa.Table:
    """Simulate all users step by step, vectorised over users (see the module docstring)."""
    present = [np.unique(attrs[1:, j]) for j in range(3)]  # values that own at least one item
    pi_shape, pi_brand = transition_maps(cfg)
    index = _fallback_index(attrs, cfg)
    n_users, steps = cfg.users, cfg.max_length
    favourite = _choose(present[2], n_users, rng)
    seq = np.zeros((n_users, steps), dtype=np.int64)
    shape, brand = _choose(present[0], n_users, rng), _choose(present[1], n_users, rng)
    for t in range(steps):
        if t > 0:
            cur = attrs[seq[:, t - 1]]
            keep_s = rng.random(n_users) < cfg.image_signal
            keep_b = rng.random(n_users) < cfg.text_signal
            shape = np.where(keep_s, pi_shape[cur[:, 0]], _choose(present[0], n_users, rng))
            brand = np.where(keep_b, pi_brand[cur[:, 1]], _choose(present[1], n_users, rng))
        fav = rng.random(n_users) < cfg.colour_signal
        colour = np.where(fav, favourite, _choose(present[2], n_users, rng))
        drawn = np.stack([shape, brand, colour], axis=1)
        seq[:, t] = _draw_unseen(drawn, seq[:, :t], attrs, cfg, index, rng)
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
