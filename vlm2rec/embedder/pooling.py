r"""Pure pooling and fusion maths of the embedders: tensors in, tensors out.

Reading of [paper] §2 (VLM2Vec convention for decoders; normalised mean / learned projection of the
concatenation for dual encoders, variants ``mean`` and ``concat_proj``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fuse_concat_proj", "fuse_mean", "l2_normalise", "last_token_pool", "masked_mean"]


def l2_normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""Row-wise :math:`x / \max(\lVert x \rVert_2, \epsilon)` in float32; a zero row stays zero.

    Shapes: ``x`` [N, D] -> [N, D] float32.
    """
    return F.normalize(x.float(), dim=-1, eps=eps)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    r"""Hidden state of each row's last real token (VLM2Vec convention).

    .. math:: h_b = H_{b,\,t_b}, \qquad t_b = \max\{t : m_{b,t} = 1\}

    With left padding :math:`t_b = S-1` for every row; computing :math:`t_b` from the mask makes the
    same function correct for right padding too, which is what the padding test relies on.

    ==========  ==================
    symbol      argument
    ==========  ==================
    :math:`H`   ``hidden``
    :math:`m`   ``attention_mask``
    ==========  ==================

    Shapes:
        hidden [B, S, H], attention_mask [B, S] (1 = real token, every row has one) -> [B, H].
    """
    if hidden.shape[:2] != attention_mask.shape:
        raise ValueError(
            f"last_token_pool: hidden {tuple(hidden.shape)} and mask {tuple(attention_mask.shape)} disagree"
        )
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    # t_b = largest position whose mask is 1: mask * position, max over the sequence
    last = (attention_mask.long() * positions).amax(dim=1)  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Mean of the rows of ``x`` selected per group: :math:`\bar x_b = \sum_k m_{bk} x_{bk} /
    \max(1, \sum_k m_{bk})`; a group with no selected row gives the zero vector.

    Shapes: x [B, K, D], mask [B, K] (0/1) -> [B, D].
    """
    weights = mask.to(x.dtype).unsqueeze(-1)  # [B, K, 1]
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def fuse_mean(text: torch.Tensor, image: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
    r"""Fusion variant ``mean``: normalised mean of the two normalised tower outputs.

    .. math:: v^M = \frac{\hat t + m\,\hat\imath}{\lVert \hat t + m\,\hat\imath \rVert_2},
              \quad \hat t = t/\lVert t\rVert,\ \hat\imath = i/\lVert i\rVert

    ==================  =============
    symbol              argument
    ==================  =============
    :math:`t`           ``text``
    :math:`i`           ``image``
    :math:`m \in\{0,1\}`  ``has_image``
    ==================  =============

    With :math:`m = 0` the result is exactly :math:`\hat t` (the text-only input).

    Shapes: text [N, D], image [N, D], has_image [N] -> [N, D] float32.
    """
    m = has_image.to(torch.float32).unsqueeze(-1)  # [N, 1]
    return l2_normalise(l2_normalise(text) + m * l2_normalise(image))


def fuse_concat_proj(
    text: torch.Tensor,
    image: torch.Tensor,
    has_image: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    r"""Fusion variant ``concat_proj``: a learned linear map of the concatenated normalised outputs.

    .. math:: v^M = \frac{W [\hat t;\ m\,\hat\imath] + b}{\lVert W [\hat t;\ m\,\hat\imath] + b \rVert_2}

    A missing image enters as the zero vector (:math:`m = 0`), so the text-only input goes through
    the same map. With :math:`W = \tfrac12 [I\ I]`, :math:`b = 0` this equals :func:`fuse_mean`.

    ==================  =============
    symbol              argument
    ==================  =============
    :math:`t, i`        ``text``, ``image``
    :math:`m`           ``has_image``
    :math:`W, b`        ``weight``, ``bias``
    ==================  =============

    Shapes: text [N, D], image [N, D], has_image [N], weight [D, 2D], bias [D] -> [N, D] float32.
    """
    m = has_image.to(torch.float32).unsqueeze(-1)  # [N, 1]
    joint = torch.cat([l2_normalise(text), m * l2_normalise(image)], dim=-1)  # [N, 2D]
    return l2_normalise(F.linear(joint, weight.float(), bias.float()))
