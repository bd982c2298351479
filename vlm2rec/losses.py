r"""The VLM2Rec objective as pure functions of embeddings (METHOD.md §3-6).

Tensors and floats in, tensors out: no config objects, no IO, no communication. The training loop
all-gathers the global batch first (:mod:`vlm2rec.distributed`), so these functions see the whole
global batch and every rank takes the same weak-modality decision.

.. math::

    L = L_{WPCL} + \beta \, L_{topo}

Precision: similarities, log-sum-exps and KL divergences are computed in at least float32 with
autocast switched off, so bf16 inputs (or bf16 autocast) still give float32 losses; float64
inputs stay float64 (gradient checks).

Cosine similarity ``s`` normalises its inputs, so callers may pass raw or L2-normalised vectors.
An all-zero vector (a missing view) has similarity 0 to everything rather than NaN.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Granularity",
    "PenaltyVariant",
    "TopologyVariant",
    "combine",
    "info_nce",
    "relational_topology",
    "vlm2rec_loss",
    "weak_modality_penalized",
]

PenaltyVariant = Literal["reweight", "hard_negative"]
Granularity = Literal["batch", "sample"]
TopologyVariant = Literal["strong_to_weak", "symmetric", "fused_anchor"]


def _full(x: Tensor) -> Tensor:
    """Promote half precision to float32 and keep float32/float64 as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity matrix ``[N, D] x [M, D] -> [N, M]`` in >= float32, autocast off."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return F.normalize(_full(a), dim=-1) @ F.normalize(_full(b), dim=-1).T


def _cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity ``[B, D], [B, D] -> [B]`` in >= float32, autocast off."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return (F.normalize(_full(a), dim=-1) * F.normalize(_full(b), dim=-1)).sum(-1)


def _expect_2d(name: str, x: Tensor, rows: int | None = None, dim: int | None = None) -> None:
    """Raise a ValueError naming ``name`` unless ``x`` is ``[rows, dim]`` (None = any)."""
    ok = x.dim() == 2 and rows in (None, x.shape[0]) and dim in (None, x.shape[1])
    if not ok:
        want = f"[{'B' if rows is None else rows}, {'D' if dim is None else dim}]"
        raise ValueError(f"{name}: expected a float tensor of shape {want}, got {list(x.shape)}")


def _expect_1d(name: str, x: Tensor, rows: int) -> None:
    """Raise a ValueError naming ``name`` unless ``x`` has shape ``[rows]``."""
    if x.shape != (rows,):
        raise ValueError(f"{name}: expected shape [{rows}], got {list(x.shape)}")


def _expect_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` > 0 (or >= 0)."""
    if not (value >= 0 if allow_zero else value > 0) or math.isnan(value):
        raise ValueError(f"{name}: expected {'>= 0' if allow_zero else '> 0'}, got {value}")


def _nce_terms(
    queries: Tensor,
    keys: Tensor,
    temperature: float,
    key_ids: Tensor | None,
    positives: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Positive logit ``[B]`` and the duplicate-masked log-sum-exp over the keys ``[B]``."""
    _expect_2d("queries", queries)
    batch, dim = queries.shape
    _expect_2d("keys", keys, dim=dim)
    n_keys = keys.shape[0]
    _expect_positive("temperature", temperature)
    if positives is None:
        if n_keys < batch:
            raise ValueError(f"keys: need K >= B = {batch} rows without positives, got {n_keys}")
        positives = torch.arange(batch, device=keys.device)
    else:  # only given indices are checked: the check costs a device sync
        _expect_1d("positives", positives, batch)
        if bool(((positives < 0) | (positives >= n_keys)).any()):
            raise ValueError(f"positives: expected indices in [0, {n_keys}), got {positives}")
    logits = _cosine(queries, keys) / temperature  # [B, K]
    pos_logit = logits.gather(1, positives[:, None]).squeeze(1)  # [B]
    if key_ids is not None:
        _expect_1d("key_ids", key_ids, n_keys)
        # Another copy of the positive item is not a negative of itself: drop it from the sum.
        same_item = key_ids[None, :] == key_ids[positives][:, None]  # [B, K]
        other_key = torch.arange(n_keys, device=keys.device)[None, :] != positives[:, None]
        logits = logits.masked_fill(same_item & other_key, float("-inf"))
    return pos_logit, torch.logsumexp(logits, dim=1)


def info_nce(
    queries: Tensor,
    keys: Tensor,
    temperature: float,
    key_ids: Tensor | None = None,
    positives: Tensor | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    r"""In-batch InfoNCE with duplicate masking (METHOD.md §3, the standard contrastive SFT).

    .. math::

        \ell_b = -\log \frac{e^{s(q_b, k_{p_b})/\tau}}
                 {\sum_{j \notin D_b} e^{s(q_b, k_j)/\tau}}, \qquad
        D_b = \{ j \ne p_b : \mathrm{id}_j = \mathrm{id}_{p_b} \}, \qquad
        L = \frac{1}{B}\sum_b \ell_b

    ======================  =====================================================
    symbol                  argument
    ======================  =====================================================
    :math:`q_b`             ``queries[b]`` (sequence embedding :math:`u_b`)
    :math:`k_j`             ``keys[j]`` (item view, e.g. :math:`v^M_j`)
    :math:`\tau`            ``temperature``
    :math:`p_b`             ``positives[b]`` (default ``b``)
    :math:`\mathrm{id}_j`   ``key_ids[j]`` (None: no masking)
    :math:`s`               cosine similarity
    ======================  =====================================================

    Shapes:
        queries ``[B, D]``, keys ``[K, D]`` (``K >= B`` when ``positives`` is None),
        key_ids ``[K]``, positives ``[B]`` (int64) -> ``[]`` (``reduction="mean"``) or ``[B]``
        (``reduction="none"``, the per-sample losses :math:`\ell_b`).

    Reading of [paper] §3 (contrastive SFT baseline), masking variant "duplicates of the positive
    removed from the denominator". With all K keys equal (none masked) the loss is :math:`\log K`.
    """
    pos_logit, lse = _nce_terms(queries, keys, temperature, key_ids, positives)
    per_sample = lse - pos_logit  # [B]
    if reduction == "none":
        return per_sample
    if reduction != "mean":
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    return per_sample.mean()


def _check_views(u: Tensor, v_both: Tensor, v_text: Tensor, v_image: Tensor) -> None:
    """All four embeddings must be ``[B, D]`` with the same B and D."""
    _expect_2d("u", u)
    for name, v in (("v_both", v_both), ("v_text", v_text), ("v_image", v_image)):
        _expect_2d(name, v, rows=u.shape[0], dim=u.shape[1])


def _weak_choice(loss_text: Tensor, loss_image: Tensor, granularity: Granularity) -> Tensor:
    """Boolean ``[B]``: True where the image is the weak modality (larger loss; ties -> text)."""
    if granularity == "batch":
        return (loss_image.mean() > loss_text.mean()).expand(loss_text.shape[0])
    if granularity == "sample":
        return loss_image > loss_text
    raise ValueError(f"granularity: expected 'batch' or 'sample', got {granularity!r}")


def _wpcl(
    u: Tensor,
    views: tuple[Tensor, Tensor, Tensor],
    temperature: float,
    alpha: float,
    key_ids: Tensor | None,
    variant: PenaltyVariant,
    granularity: Granularity,
) -> tuple[dict[str, Tensor], Tensor]:
    """WPCL parts and the weak-image decision ``[B]`` (shared with the topology term)."""
    v_both, v_text, v_image = views
    _check_views(u, v_both, v_text, v_image)
    _expect_positive("alpha", alpha, allow_zero=True)
    pos_logit, lse = _nce_terms(u, v_both, temperature, key_ids, None)
    cl_loss = (lse - pos_logit).mean()
    loss_text = info_nce(u, v_text, temperature, key_ids, reduction="none")  # [B]
    loss_image = info_nce(u, v_image, temperature, key_ids, reduction="none")  # [B]
    weak_image = _weak_choice(loss_text.detach(), loss_image.detach(), granularity)  # [B]
    if variant == "reweight":
        weak_loss = torch.where(weak_image, loss_image, loss_text).mean()
        wpcl_loss = cl_loss + alpha * weak_loss  # alpha = 0: exactly cl_loss (weak_loss finite)
    elif variant == "hard_negative":
        wpcl_loss = cl_loss
        if alpha > 0:  # log(alpha) below needs alpha > 0; alpha = 0 is exactly L_CL
            v_strong = torch.where(weak_image[:, None], _full(v_text), _full(v_image))  # [B, D]
            extra = _cosine_rows(u, v_strong) / temperature  # [B]
            penalised = torch.logaddexp(lse, extra + math.log(alpha))  # [B]
            wpcl_loss = (penalised - pos_logit).mean()
    else:
        raise ValueError(f"variant: expected 'reweight' or 'hard_negative', got {variant!r}")
    parts = {
        "cl_loss": cl_loss,
        "wpcl_loss": wpcl_loss,
        "loss_text": loss_text.detach().mean(),
        "loss_image": loss_image.detach().mean(),
        "weak_image_share": weak_image.to(cl_loss.dtype).mean(),
    }
    return parts, weak_image


def weak_modality_penalized(
    u: Tensor,
    v_both: Tensor,
    v_text: Tensor,
    v_image: Tensor,
    temperature: float,
    alpha: float,
    key_ids: Tensor | None,
    variant: PenaltyVariant,
    granularity: Granularity,
) -> dict[str, Tensor]:
    r"""Weak-modality Penalized Contrastive Learning (METHOD.md §4).

    The weak modality :math:`w` has the larger detached single-view loss (:math:`L^I` vs
    :math:`L^T`, per batch or per sample; ties choose text); :math:`s` is the other one.

    .. math::

        \text{reweight:}\quad L_{WPCL} = L_{CL} + \alpha L^w

        \text{hard\_negative:}\quad L_{WPCL} = -\frac{1}{B}\sum_b \log
            \frac{e^{s(u_b, v^M_b)/\tau}}{\sum_{j \notin D_b} e^{s(u_b, v^M_j)/\tau}
                  + \alpha\, e^{s(u_b, v^{s}_b)/\tau}}

    ==============================  ==========================================
    symbol                          argument
    ==============================  ==========================================
    :math:`u_b`                     ``u[b]``
    :math:`v^M, v^T, v^I`           ``v_both``, ``v_text``, ``v_image``
    :math:`\tau`                    ``temperature``
    :math:`\alpha`                  ``alpha`` (>= 0; 0 gives exactly L_CL)
    :math:`D_b`                     duplicates of item ``key_ids[b]`` (masked)
    :math:`L^T, L^I`                :func:`info_nce` with keys v_text / v_image
    ==============================  ==========================================

    Shapes:
        u, v_both, v_text, v_image ``[B, D]``; key_ids ``[B]`` or None -> dict of ``[]`` tensors.

    Returns ``cl_loss`` (:math:`L_{CL}`), ``wpcl_loss`` (:math:`L_{WPCL}`, with gradients),
    ``loss_text``/``loss_image`` (detached :math:`L^T, L^I`) and ``weak_image_share`` (the fraction
    of decisions that chose the image: 0 or 1 per batch, a fraction per sample).

    Reading of [paper] §4 ("rectify gradient imbalance"), variant ``variant``; with
    ``granularity="batch"`` :math:`v^s_b` is ``v_text[b]`` or ``v_image[b]`` for the whole batch,
    with ``"sample"`` it is chosen per sample b.
    """
    parts, _ = _wpcl(
        u, (v_both, v_text, v_image), temperature, alpha, key_ids, variant, granularity
    )
    return parts


def _relational_log_probs(v: Tensor, tau_t: float) -> Tensor:
    r"""``log P_i(j)`` for ``j != i``: ``[B, D] -> [B, B-1]`` (columns: j ascending, i skipped)."""
    n = v.shape[0]
    logits = _cosine(v, v) / tau_t  # [B, B]
    # Remove the diagonal without -inf (which would make 0 * inf = NaN in the KL): the flat view
    # minus its first entry splits into B-1 rows of B+1 whose last entry is the next diagonal.
    off_diag = logits.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)  # [B, B-1]
    return F.log_softmax(off_diag, dim=1)


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(P_i || Q_i)`` per row: ``[B, B-1] x2 -> [B]``."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def relational_topology(
    v_both: Tensor,
    v_text: Tensor,
    v_image: Tensor,
    topology_temperature: float,
    variant: TopologyVariant,
    weak_is_image: Tensor | bool,
) -> Tensor:
    r"""Cross-Modal Relational Topology Regularisation (METHOD.md §5).

    .. math::

        P^m_i(j) = \mathrm{softmax}_{j \ne i}\big(s(v^m_i, v^m_j)/\tau_t\big),
        \quad m \in \{T, I, M\}

        \text{strong\_to\_weak:}\ \frac{1}{B}\sum_i KL(\mathrm{sg}[P^s_i] \,\|\, P^w_i)
        \qquad
        \text{symmetric:}\ \frac{1}{B}\sum_i \tfrac12\big(KL(P^T_i\|P^I_i) + KL(P^I_i\|P^T_i)\big)

        \text{fused\_anchor:}\ \frac{1}{B}\sum_i \tfrac12 \sum_{m \in \{T, I\}}
            KL(\mathrm{sg}[P^M_i] \,\|\, P^m_i)

    ======================  ============================================================
    symbol                  argument
    ======================  ============================================================
    :math:`v^M, v^T, v^I`   ``v_both``, ``v_text``, ``v_image`` (the batch's items)
    :math:`\tau_t`          ``topology_temperature``
    :math:`w, s`            ``weak_is_image`` (True: w = I, s = T); bool / ``[]`` / ``[B]``
    :math:`\mathrm{sg}`     stop-gradient (``detach``)
    ======================  ============================================================

    Shapes:
        v_both, v_text, v_image ``[B, D]``; weak_is_image ``[]`` or ``[B]`` (per item i when the
        weak modality is chosen per sample) -> ``[]``. ``B < 2`` has no relations and gives 0.

    Duplicate items in the batch are fine: a copy j of item i has the same similarity row in every
    modality, so it enters :math:`P^T_i`, :math:`P^I_i` and :math:`P^M_i` alike and only adds no
    false disagreement; each copy is one more row i, i.e. items are weighted by batch frequency.

    Reading of [paper] §5 ("preserve geometric consistency between modalities"), variant
    ``variant``; ``weak_is_image`` is only used by ``strong_to_weak``.
    """
    _expect_2d("v_text", v_text)
    n, dim = v_text.shape
    _expect_2d("v_both", v_both, rows=n, dim=dim)
    _expect_2d("v_image", v_image, rows=n, dim=dim)
    _expect_positive("topology_temperature", topology_temperature)
    if variant not in ("strong_to_weak", "symmetric", "fused_anchor"):
        raise ValueError(
            f"variant: expected 'strong_to_weak', 'symmetric' or 'fused_anchor', got {variant!r}"
        )
    if n < 2:
        return torch.zeros((), dtype=_full(v_text).dtype, device=v_text.device)
    log_t = _relational_log_probs(v_text, topology_temperature)  # [B, B-1]
    log_i = _relational_log_probs(v_image, topology_temperature)  # [B, B-1]
    if variant == "symmetric":
        return 0.5 * (_kl_rows(log_t, log_i) + _kl_rows(log_i, log_t)).mean()
    if variant == "fused_anchor":
        anchor = _relational_log_probs(v_both, topology_temperature).detach()  # [B, B-1]
        return 0.5 * (_kl_rows(anchor, log_t) + _kl_rows(anchor, log_i)).mean()
    weak = torch.as_tensor(weak_is_image, dtype=torch.bool, device=v_text.device)
    if weak.dim() > 1 or (weak.dim() == 1 and weak.shape[0] != n):
        raise ValueError(
            f"weak_is_image: expected a bool, shape [] or [{n}], got {list(weak.shape)}"
        )
    weak = weak.expand(n)[:, None]  # [B, 1]: row i uses item i's weak modality
    strong_rel = torch.where(weak, log_t, log_i).detach()
    weak_rel = torch.where(weak, log_i, log_t)
    return _kl_rows(strong_rel, weak_rel).mean()


def combine(parts: dict[str, Tensor], beta: float) -> Tensor:
    r"""Total objective :math:`L = L_{WPCL} + \beta L_{topo}` (METHOD.md §6).

    ====================  ==========================
    symbol                argument
    ====================  ==========================
    :math:`L_{WPCL}`      ``parts["wpcl_loss"]``
    :math:`L_{topo}`      ``parts["topo_loss"]``
    :math:`\beta`         ``beta`` (0 gives exactly L_WPCL)
    ====================  ==========================

    Shapes: ``[]`` tensors -> ``[]``.
    """
    _expect_positive("beta", beta, allow_zero=True)
    # beta = 0 returns L_WPCL bit for bit: x + 0 * y == x for any finite y (L_topo is finite).
    return parts["wpcl_loss"] + beta * parts["topo_loss"]


def vlm2rec_loss(
    u: Tensor,
    v_both: Tensor,
    v_text: Tensor,
    v_image: Tensor,
    item_ids: Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    topology_temperature: float,
    penalty_variant: PenaltyVariant,
    weak_modality: Granularity,
    topology_variant: TopologyVariant,
) -> dict[str, Tensor]:
    r"""The whole VLM2Rec objective on one (global) batch (METHOD.md §3-6).

    .. math::

        L = L_{WPCL}(u, v^M, v^T, v^I; \tau, \alpha) + \beta\, L_{topo}(v^M, v^T, v^I; \tau_t)

    ==============================  ==========================================
    symbol                          argument
    ==============================  ==========================================
    :math:`u_b`                     ``u[b]``, the sequence embedding of example b
    :math:`v^M_b, v^T_b, v^I_b`     ``v_both[b]``, ``v_text[b]``, ``v_image[b]`` (its target)
    :math:`\mathrm{id}_b`           ``item_ids[b]`` (duplicate masking)
    :math:`\tau, \tau_t`            ``temperature``, ``topology_temperature``
    :math:`\alpha, \beta`           ``alpha``, ``beta``
    ==============================  ==========================================

    Shapes:
        u, v_both, v_text, v_image ``[B, D]``; item_ids ``[B]`` -> dict of ``[]`` tensors.

    Returns the parts named as the training metrics without ``train/``: ``loss``, ``cl_loss``,
    ``wpcl_loss``, ``topo_loss``, ``loss_text``, ``loss_image``, ``weak_image_share``. The weak
    modality chosen by WPCL (``weak_modality`` = batch or sample) also picks the strong/weak pair
    of the ``strong_to_weak`` topology. ``alpha = beta = 0`` gives exactly :func:`info_nce`.

    Reading of [paper] §3-6; variants ``penalty_variant`` and ``topology_variant``.
    """
    _expect_1d("item_ids", item_ids, u.shape[0])
    parts, weak_image = _wpcl(
        u,
        (v_both, v_text, v_image),
        temperature,
        alpha,
        item_ids,
        penalty_variant,
        weak_modality,
    )
    parts["topo_loss"] = relational_topology(
        v_both, v_text, v_image, topology_temperature, topology_variant, weak_image
    )
    parts["loss"] = combine(parts, beta)
    return parts
