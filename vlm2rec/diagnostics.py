r"""Modality-collapse diagnostics (METHOD.md §7): pure functions of metrics and embeddings.

Label-based (from the ranking metrics of the three item views, :math:`n_M, n_T, n_I` = NDCG@10 of
the ``both``, ``text`` and ``image`` views):

.. math::

    \mathrm{reliance\_text} = 1 - \frac{n_I}{n_M}, \qquad
    \mathrm{reliance\_image} = 1 - \frac{n_T}{n_M}, \qquad
    \mathrm{modality\_balance} = \frac{\min(n_T, n_I)}{\max(n_T, n_I)}

(reliance on a modality = the share of fused accuracy lost when that modality is dropped; both are 0
when :math:`n_M = 0`, and negative when a single view beats the fused one; balance is 1 when the
views are equally good, 0 when one has collapsed, and 0 when both are 0).

Label-free (from one view's item embeddings :math:`X \in \mathbb{R}^{N \times D}`, rows
:math:`x_i`, singular values :math:`\sigma_k`):

.. math::

    \mathrm{anisotropy}(X) = \Bigl\| \frac{1}{|R|} \sum_{i \in R} \frac{x_i}{\|x_i\|} \Bigr\|,
    \quad R = \{i : x_i \ne 0\}; \qquad
    \mathrm{erank}(X) = \exp\Bigl(-\sum_k p_k \log p_k\Bigr),\ p_k = \frac{\sigma_k}{\sum_l \sigma_l}

Anisotropy is 1 when every item maps to the same direction and near 0 for isotropic embeddings;
the effective rank (Roy & Vetterli) is 1 for a rank-one matrix and :math:`D` for orthogonal
directions of equal energy.

==========================  ====================================================
symbol                      argument
==========================  ====================================================
:math:`n_M, n_T, n_I`       ``metrics["{split}/ndcg@10"]``, ``.../text``, ``.../image``
:math:`X`                   ``embeddings`` (or ``item_views[view][1:]``)
==========================  ====================================================

Shapes: ``embeddings [N, D]``; ``item_views[view] [N + 1, D]`` (row 0 = padding, dropped).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["anisotropy", "effective_rank", "embedding_diagnostics", "modality_diagnostics"]

_ROWS = 65536  # rows cast to float64 at once: bounds the memory of a 1M-item catalogue


def _ndcg10(metrics: dict[str, float], split: str, view: str) -> float:
    key = f"{split}/ndcg@10" + (f"/{view}" if view else "")
    if key not in metrics:
        raise KeyError(f"metrics: expected key {key!r} (the {view or 'both'} view's NDCG@10)")
    return float(metrics[key])


def modality_diagnostics(metrics: dict[str, float], split: str) -> dict[str, float]:
    r"""Reliance and balance from the views' NDCG@10 (module docstring equations).

    Reads ``{split}/ndcg@10``, ``{split}/ndcg@10/text``, ``{split}/ndcg@10/image``; returns
    ``{split}/reliance_text``, ``{split}/reliance_image``, ``{split}/modality_balance``.
    """
    fused, text, image = (_ndcg10(metrics, split, v) for v in ("", "text", "image"))
    # a zero fused score carries no reliance information; 0 rather than a division error
    rel_text = 0.0 if fused == 0.0 else 1.0 - image / fused
    rel_image = 0.0 if fused == 0.0 else 1.0 - text / fused
    high = max(text, image)
    balance = 0.0 if high == 0.0 else min(text, image) / high
    return {
        f"{split}/reliance_text": rel_text,
        f"{split}/reliance_image": rel_image,
        f"{split}/modality_balance": balance,
    }


def _check_2d(embeddings: Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings: expected [N, D], got shape {tuple(embeddings.shape)}")


def _row_blocks(embeddings: Tensor) -> Iterator[Tensor]:
    _check_2d(embeddings)
    for start in range(0, embeddings.shape[0], _ROWS):
        yield embeddings[start : start + _ROWS].to(torch.float64)  # [<=_ROWS, D]


def anisotropy(embeddings: Tensor) -> float:
    r""":math:`\|\mathrm{mean}_{i \in R}\, x_i / \|x_i\|\|` over the non-zero rows :math:`R`.

    Zero rows (e.g. an absent view) are excluded: they have no direction. Returns NaN when no row is
    non-zero (no direction to measure, which 0 = "isotropic" would misreport).

    Shapes: ``embeddings [N, D]``.
    """
    _check_2d(embeddings)
    total = torch.zeros(embeddings.shape[1], dtype=torch.float64, device=embeddings.device)
    kept = 0
    for block in _row_blocks(embeddings):
        norms = block.norm(dim=1)  # [rows]
        keep = norms > 0
        total += (block[keep] / norms[keep, None]).sum(dim=0)  # [D]
        kept += int(keep.sum())
    return math.nan if kept == 0 else float(total.norm() / kept)


def effective_rank(embeddings: Tensor) -> float:
    r"""Effective rank :math:`\exp(-\sum_k p_k \log p_k)`, :math:`p_k = \sigma_k / \sum_l \sigma_l`.

    Roy & Vetterli's definition; 0 for a zero or empty matrix.

    The singular values come from the eigenvalues of the float64 Gram matrix (:math:`D \times D`,
    accumulated over row blocks, so a 1M-item catalogue never needs an SVD of ``[N, D]``).
    Eigenvalues below :math:`\lambda_{\max} \cdot \max(N, D) \cdot \epsilon_{64}` (the usual
    numerical-rank tolerance, applied to the Gram) are rounding noise and count as zero; without
    that cut a rank-one matrix would read slightly above 1.

    Shapes: ``embeddings [N, D]``.
    """
    _check_2d(embeddings)
    n_rows, dim = embeddings.shape
    if n_rows == 0 or dim == 0:
        return 0.0  # an empty matrix has rank 0
    gram = torch.zeros(dim, dim, dtype=torch.float64, device=embeddings.device)
    for block in _row_blocks(embeddings):
        gram += block.T @ block  # [D, D]
    eig = torch.linalg.eigvalsh(gram)  # [D], ascending
    if float(eig[-1]) <= 0.0:
        return 0.0  # the zero matrix
    tol = float(eig[-1]) * max(n_rows, dim) * torch.finfo(torch.float64).eps
    sigma = eig[eig > tol].sqrt()
    p = sigma / sigma.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_diagnostics(item_views: dict[str, Tensor], split: str) -> dict[str, float]:
    """``{split}/anisotropy_{view}`` and ``{split}/erank_{view}`` for each single view present.

    Only the ``text`` and ``image`` views are measured (other keys, e.g. ``both``, are ignored);
    row 0 (padding) is dropped first.

    Shapes: ``item_views[view] [N + 1, D]``.
    """
    out: dict[str, float] = {}
    for view in ("text", "image"):
        if view in item_views:
            emb = item_views[view][1:]  # [N, D]: drop the padding row
            out[f"{split}/anisotropy_{view}"] = anisotropy(emb)
            out[f"{split}/erank_{view}"] = effective_rank(emb)
    return out
