r"""The synthetic benchmark's own ceiling and floors: its generator's posterior, scored as a model.

For an evaluation example with visible history :math:`h` (the run's last ``L`` items, newest
:math:`i_L` with shape :math:`s_L` and brand :math:`b_L`) and the set :math:`S` of items the user met
before the target, the generator (:mod:`vlm2rec.data.synthetic`) draws a cell
:math:`(s', b', c')` with probability

.. math::

    m(s', b', c') = \Bigl(\rho_I [s' = \pi_I(s_L)] + \tfrac{1 - \rho_I}{S}\Bigr)
                    \Bigl(\rho_T [b' = \pi_T(b_L)] + \tfrac{1 - \rho_T}{B}\Bigr)
                    \sum_f p(f \mid h) \Bigl(\rho_C [c' = f] + \tfrac{1 - \rho_C}{C}\Bigr)

(:math:`p(f \mid h) \propto \prod_{i \in h} (\rho_C [c_i = f] + \tfrac{1-\rho_C}{C})`, a uniform
prior over the favourite colour) and then an unseen item of the first level of
:data:`~vlm2rec.data.synthetic.FALLBACK` that still has one. So the next item :math:`j \notin S` has

.. math:: P(j \mid h, S) = \sum_{\ell} \sum_{k :\, \ell(k) = \ell,\ \kappa_\ell(k) = \kappa_\ell(j)}
          \frac{m(k)}{n_\ell(\kappa_\ell(j))}

where :math:`\ell(k)` is the level cell :math:`k` falls back to, :math:`\kappa_\ell` the level's key
(the attributes it keeps) and :math:`n_\ell` its count of unseen items. This posterior, scored through
the project's own evaluation (same mask, same ties, same history length), is the **full oracle**:
ranking by it maximises expected Recall@k and NDCG@k, so no model can beat it in expectation. The
colour evidence treats every visible item's colour as drawn (a fallback that changed the colour is
ignored); a Monte-Carlo test bounds what that costs.

The **text-only** and **image-only** oracles are the best an item view that sees only the text
(brand and colour) or only the image (shape and colour) can do: each candidate scores the mean of
:math:`P` over the candidates it cannot tell apart (same brand and colour; same shape and colour).
A fused score at the text-only oracle with the full oracle far above it is modality collapse.

Keys: ``{split}/oracle/{recall,ndcg}@10`` and the same with ``/text`` or ``/image`` appended.

Shapes: ``U`` examples, ``N`` items, ``K = S B C`` cells; posteriors ``[U, N + 1]`` (column 0 =
padding, always 0), cell masses ``[U, K]``.
"""

from __future__ import annotations

import numpy as np
import torch

from vlm2rec.config import EvalConfig, SyntheticConfig
from vlm2rec.data.splits import EvalExamples
from vlm2rec.data.synthetic import FALLBACK, item_attributes, level_keys, transition_maps
from vlm2rec.ranking import rank_scores

__all__ = ["ORACLE_KS", "oracle_metrics", "posterior", "view_scores"]

ORACLE_KS: tuple[int, ...] = (10,)  #: cut-offs reported for the oracles
_VIEW_COLS = {"text": (1, 2), "image": (0, 2)}  #: attributes each single view can see


def _factor(last: np.ndarray, moves: np.ndarray, present: np.ndarray, rho: float) -> np.ndarray:
    """``[U, V]`` P(next value) of one Markov attribute: ``moves[last]`` w.p. rho, else uniform."""
    out = np.zeros((len(last), len(moves)))
    out[:, present] = (1.0 - rho) / len(present)
    out[np.arange(len(last)), moves[last]] += rho
    return out


def _colour(histories: np.ndarray, colour_of: np.ndarray, present: np.ndarray, rho: float,
            size: int) -> np.ndarray:  # fmt: skip
    """``[U, C]`` P(next colour | visible history) through the favourite colour's posterior."""
    like = np.zeros((size, size))  # [f, c] = P(c | favourite f), rows/columns of present colours
    like[np.ix_(present, present)] = (1.0 - rho) / len(present)
    like[present, present] += rho
    post = np.zeros((len(histories), size))
    post[:, present] = 1.0
    for col in range(histories.shape[1]):
        h = histories[:, col]
        real = h > 0  # left padding carries no evidence
        post[real] *= like[:, colour_of[h[real]]].T
    post /= post.sum(axis=1, keepdims=True)
    return post @ like


def _unseen_per_cell(examples: EvalExamples, cell_of: np.ndarray, n_cells: int) -> np.ndarray:
    """``[U, K]`` items of each cell the user has not met (``cell_of [N + 1]``, row 0 unused)."""
    total = np.bincount(cell_of[1:], minlength=n_cells).astype(np.float64)
    rows = np.repeat(np.arange(len(examples)), np.diff(examples.seen_indptr))
    met = np.zeros((len(examples), n_cells))
    np.add.at(met, (rows, cell_of[examples.seen_items]), 1.0)
    return total[None, :] - met


def _cell_mass(cfg: SyntheticConfig, examples: EvalExamples, grid: np.ndarray) -> np.ndarray:
    """``[U, K]`` :math:`m(k)`: the probability that the generator draws cell ``k`` next."""
    attrs = item_attributes(cfg)  # [N + 1, 3], row 0 = -1
    present = [np.unique(attrs[1:, c]) for c in range(3)]
    pi_shape, pi_brand = transition_maps(cfg)
    last = attrs[examples.histories[:, -1]]  # [U, 3]; the newest item is never padding
    shape = _factor(last[:, 0], pi_shape, present[0], cfg.image_signal)  # [U, S]
    brand = _factor(last[:, 1], pi_brand, present[1], cfg.text_signal)  # [U, B]
    colour = _colour(examples.histories, attrs[:, 2], present[2], cfg.colour_signal, cfg.colours)
    return shape[:, grid[:, 0]] * brand[:, grid[:, 1]] * colour[:, grid[:, 2]]


def _landing(
    mass: np.ndarray, unseen: np.ndarray, grid: np.ndarray, cfg: SyntheticConfig
) -> np.ndarray:
    """``[U, K]`` probability of each unseen item of each cell: every drawn cell's mass lands on
    the unseen items of its first :data:`FALLBACK` level that has one, shared equally."""
    per_item = np.zeros_like(mass)
    pending = np.ones_like(mass, dtype=bool)  # drawn cells whose mass has not landed yet
    for cols in FALLBACK:
        key = level_keys(grid, cols, cfg)  # [K]: the level key of each cell
        onehot = np.zeros((len(grid), int(key.max()) + 1))
        onehot[np.arange(len(grid)), key] = 1.0  # [K, keys]
        free = unseen @ onehot  # [U, keys]: unseen items under each key
        lands = pending & (free[:, key] > 0)  # [U, K]: drawn cells that land at this level
        share = np.divide((mass * lands) @ onehot, free, out=np.zeros_like(free), where=free > 0)
        per_item += share[:, key]
        pending &= ~lands
    return np.where(unseen > 0, per_item, 0.0)


def posterior(cfg: SyntheticConfig, examples: EvalExamples) -> np.ndarray:
    """``[U, N + 1]`` float64 :math:`P(j \\mid h, S)` of every item (module docstring); 0 for met
    items and for the padding column. Rows sum to 1."""
    shape = (cfg.shapes, cfg.brands, cfg.colours)
    grid = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), axis=1)  # [K, 3]
    attrs = item_attributes(cfg)
    cell_of = np.where(attrs[:, 0] >= 0, level_keys(attrs, FALLBACK[0], cfg), 0)  # [N + 1]
    unseen = _unseen_per_cell(examples, cell_of, len(grid))  # [U, K]
    scores = _landing(_cell_mass(cfg, examples, grid), unseen, grid, cfg)[:, cell_of]
    scores[:, 0] = 0.0  # [U, N + 1]
    met_rows = np.repeat(np.arange(len(examples)), np.diff(examples.seen_indptr))
    scores[met_rows, examples.seen_items] = 0.0
    return scores


def view_scores(
    cfg: SyntheticConfig, examples: EvalExamples, post: np.ndarray, view: str, exclude: str
) -> np.ndarray:
    """``[U, N + 1]`` scores of the best ``view`` (``both``, ``text`` or ``image``) can do: the
    mean of ``post`` over the candidates (under ``eval.exclude_seen = exclude``) it cannot tell
    apart from each item."""
    if view == "both":
        return post
    attrs = item_attributes(cfg)
    group = np.where(attrs[:, 0] >= 0, level_keys(attrs, _VIEW_COLS[view], cfg), 0)  # [N + 1]
    candidate = np.ones_like(post, dtype=bool)
    candidate[:, 0] = False
    indptr, excluded = examples.excluded(exclude)
    candidate[np.repeat(np.arange(len(examples)), np.diff(indptr)), excluded] = False
    n_groups = int(group.max()) + 1
    onehot = np.zeros((len(group), n_groups))
    onehot[np.arange(1, len(group)), group[1:]] = 1.0  # [N + 1, G]; padding in no group
    total = (post * candidate) @ onehot  # [U, G]
    count = candidate.astype(np.float64) @ onehot
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return mean[:, group]


def oracle_metrics(
    cfg: SyntheticConfig, examples: EvalExamples, split: str, eval_cfg: EvalConfig
) -> dict[str, float]:
    """``{split}/oracle/{recall,ndcg}@10`` for the full posterior and the ``/text``, ``/image``
    oracles, under ``eval_cfg``'s mask and tie rules."""
    post = posterior(cfg, examples)
    indptr, excluded = examples.excluded(eval_cfg.exclude_seen)
    out: dict[str, float] = {}
    for view in ("both", "text", "image"):
        scores = torch.from_numpy(view_scores(cfg, examples, post, view, eval_cfg.exclude_seen))
        ranks = rank_scores(scores, examples.targets, indptr, excluded)
        suffix = "" if view == "both" else view
        got = ranks.metrics(f"{split}/oracle", suffix, eval_cfg.ties, ks=ORACLE_KS)
        out |= {k: v for k, v in got.items() if "/mrr" not in k}
    return out
