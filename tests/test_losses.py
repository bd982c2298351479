"""Checks of vlm2rec.losses against slow python-loop references and by invariances."""

from __future__ import annotations

import math
from typing import Any, get_args

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm2rec.losses import (
    Granularity,
    PenaltyVariant,
    TopologyVariant,
    combine,
    info_nce,
    relational_topology,
    vlm2rec_loss,
    weak_modality_penalized,
)

PENALTIES: tuple[PenaltyVariant, ...] = get_args(PenaltyVariant)
GRANULARITIES: tuple[Granularity, ...] = get_args(Granularity)
TOPOLOGIES: tuple[TopologyVariant, ...] = get_args(TopologyVariant)
PARTS = ("loss", "cl_loss", "wpcl_loss", "topo_loss", "loss_text", "loss_image", "weak_image_share")
FAST = settings(max_examples=40, deadline=None)

# ----------------------------------------------------------------------------- references


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _lse(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ref_nce_rows(
    q: list[list[float]],
    k: list[list[float]],
    tau: float,
    ids: list[int] | None,
    pos: list[int],
    extra: list[float | None] | None = None,
) -> list[float]:
    """Per-sample InfoNCE by loops; ``extra[b]`` is an optional additional denominator logit."""
    rows = []
    for b, p in enumerate(pos):
        logits = [
            _cos(q[b], k[j]) / tau
            for j in range(len(k))
            if j == p or ids is None or ids[j] != ids[p]
        ]
        if extra is not None and extra[b] is not None:
            logits.append(extra[b])  # type: ignore[arg-type]
        rows.append(_lse(logits) - _cos(q[b], k[p]) / tau)
    return rows


def ref_wpcl(
    u: Any, vb: Any, vt: Any, vi: Any, tau: float, alpha: float, ids: Any, variant: str, gran: str
) -> tuple[dict[str, float], list[bool]]:
    u, vb, vt, vi = u.tolist(), vb.tolist(), vt.tolist(), vi.tolist()
    ids = ids.tolist()
    pos = list(range(len(u)))
    cl = ref_nce_rows(u, vb, tau, ids, pos)
    lt = ref_nce_rows(u, vt, tau, ids, pos)
    li = ref_nce_rows(u, vi, tau, ids, pos)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    per_sample = [a > b for a, b in zip(li, lt, strict=True)]
    weak = [mean(li) > mean(lt)] * len(u) if gran == "batch" else per_sample
    if variant == "reweight":
        wpcl = mean(cl) + alpha * mean([li[b] if weak[b] else lt[b] for b in pos])
    elif alpha == 0:
        wpcl = mean(cl)
    else:
        strong = [vt[b] if weak[b] else vi[b] for b in pos]
        extra: list[float | None] = [math.log(alpha) + _cos(u[b], strong[b]) / tau for b in pos]
        wpcl = mean(ref_nce_rows(u, vb, tau, ids, pos, extra))
    parts = {
        "cl_loss": mean(cl),
        "wpcl_loss": wpcl,
        "loss_text": mean(lt),
        "loss_image": mean(li),
        "weak_image_share": mean([float(w) for w in weak]),
    }
    return parts, weak


def _rel(v: list[list[float]], i: int, tau_t: float) -> dict[int, float]:
    """Relational distribution P_i(j), j != i, by loops."""
    logits = {j: _cos(v[i], v[j]) / tau_t for j in range(len(v)) if j != i}
    z = _lse(list(logits.values()))
    return {j: math.exp(x - z) for j, x in logits.items()}


def _kl(p: dict[int, float], q: dict[int, float]) -> float:
    return sum(p[j] * math.log(p[j] / q[j]) for j in p)


def ref_topology(vb: Any, vt: Any, vi: Any, tau_t: float, variant: str, weak: list[bool]) -> float:
    vb, vt, vi = vb.tolist(), vt.tolist(), vi.tolist()
    total = 0.0
    for i in range(len(vt)):
        pt, pi = _rel(vt, i, tau_t), _rel(vi, i, tau_t)
        if variant == "strong_to_weak":
            total += _kl(pt, pi) if weak[i] else _kl(pi, pt)
        elif variant == "symmetric":
            total += 0.5 * (_kl(pt, pi) + _kl(pi, pt))
        else:
            pm = _rel(vb, i, tau_t)
            total += 0.5 * (_kl(pm, pt) + _kl(pm, pi))
    return total / len(vt)


# ----------------------------------------------------------------------------- fixtures


def batch(seed: int, n: int, dim: int, n_ids: int, dtype: torch.dtype = torch.float64) -> tuple:
    """Seeded (u, v_both, v_text, v_image, item_ids); few ids -> duplicates in the batch."""
    g = torch.Generator().manual_seed(seed)
    u, vb, vt, vi = (torch.randn(n, dim, generator=g, dtype=dtype) for _ in range(4))
    ids = torch.randint(1, n_ids + 1, (n,), generator=g)
    return u, vb, vt, vi, ids


def full_loss(*tensors: torch.Tensor, **kw: Any) -> dict[str, torch.Tensor]:
    """vlm2rec_loss(u, v_both, v_text, v_image, item_ids) with test defaults, overridable."""
    u, vb, vt, vi, ids = tensors
    args: dict[str, Any] = dict(
        temperature=0.1,
        alpha=0.5,
        beta=0.3,
        topology_temperature=0.2,
        penalty_variant="reweight",
        weak_modality="batch",
        topology_variant="strong_to_weak",
    )
    args.update(kw)
    return vlm2rec_loss(u, vb, vt, vi, ids, **args)


seeds = st.integers(0, 2**31 - 1)
sizes = st.integers(2, 7)
dims = st.integers(2, 5)
temps = st.sampled_from([0.05, 0.1, 0.5, 1.0])

# ----------------------------------------------------------------------------- InfoNCE


@FAST
@given(seed=seeds, n=sizes, extra=st.integers(0, 3), dim=dims, tau=temps, n_ids=st.integers(1, 6))
def test_info_nce_matches_loop(seed: int, n: int, extra: int, dim: int, tau: float, n_ids: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, dim, generator=g, dtype=torch.float64)
    k = torch.randn(n + extra, dim, generator=g, dtype=torch.float64)
    ids = torch.randint(1, n_ids + 1, (n + extra,), generator=g)
    pos = torch.randperm(n + extra, generator=g)[:n]
    got = info_nce(q, k, tau, key_ids=ids, positives=pos, reduction="none")
    want = ref_nce_rows(q.tolist(), k.tolist(), tau, ids.tolist(), pos.tolist())
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(info_nce(q, k, tau, ids, pos), got.mean())
    unmasked = ref_nce_rows(q.tolist(), k.tolist(), tau, None, pos.tolist())
    torch.testing.assert_close(
        info_nce(q, k, tau, positives=pos, reduction="none"), torch.tensor(unmasked).double()
    )


@FAST
@given(seed=seeds, n=sizes, extra=st.integers(0, 5), dim=dims, tau=temps)
def test_all_keys_equal_gives_log_k(seed: int, n: int, extra: int, dim: int, tau: float):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, dim, generator=g, dtype=torch.float64).expand(n + extra, dim)
    got = info_nce(q, k, tau, reduction="none")
    torch.testing.assert_close(got, torch.full((n,), math.log(n + extra), dtype=torch.float64))


def test_duplicate_key_equals_deleting_it():
    u, _, _, _, _ = batch(0, 4, 3, 4)
    keys = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([10, 11, 12, 13, 10])  # key 4 is a second copy of item 10 (positive of u_0)
    masked = info_nce(u, keys, 0.1, key_ids=ids, reduction="none")
    deleted = info_nce(u, keys[:4], 0.1, reduction="none")
    kept = info_nce(u, keys, 0.1, reduction="none")
    torch.testing.assert_close(masked[0], deleted[0])  # the copy left u_0's denominator
    torch.testing.assert_close(masked[1:], kept[1:])  # it is still a negative of the others
    assert masked[0] < kept[0]


def test_info_nce_rejects_bad_input_with_names():
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="keys"):
        info_nce(q, torch.randn(4, 2), 0.1)
    with pytest.raises(ValueError, match="keys: need K >= B"):
        info_nce(q, k[:2], 0.1)
    with pytest.raises(ValueError, match="key_ids"):
        info_nce(q, k, 0.1, key_ids=torch.arange(3))
    with pytest.raises(ValueError, match="positives"):
        info_nce(q, k, 0.1, positives=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, k, 0.0)


# ----------------------------------------------------------------------------- WPCL


@FAST
@given(
    seed=seeds,
    n=sizes,
    dim=dims,
    tau=temps,
    alpha=st.sampled_from([0.0, 0.1, 1.0, 3.0]),
    variant=st.sampled_from(PENALTIES),
    gran=st.sampled_from(GRANULARITIES),
)
def test_wpcl_matches_loop(
    seed: int, n: int, dim: int, tau: float, alpha: float, variant: Any, gran: Any
):
    u, vb, vt, vi, ids = batch(seed, n, dim, n_ids=4)
    got = weak_modality_penalized(u, vb, vt, vi, tau, alpha, ids, variant, gran)
    want, _ = ref_wpcl(u, vb, vt, vi, tau, alpha, ids, variant, gran)
    assert set(got) == set(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name], torch.tensor(value, dtype=torch.float64), msg=name)


@pytest.mark.parametrize("variant", PENALTIES)
def test_alpha_zero_is_exactly_info_nce(variant: Any):
    u, vb, vt, vi, ids = batch(3, 8, 6, n_ids=5, dtype=torch.float32)
    for gran in GRANULARITIES:
        parts = weak_modality_penalized(u, vb, vt, vi, 0.07, 0.0, ids, variant, gran)
        assert torch.equal(parts["wpcl_loss"], parts["cl_loss"])
        assert torch.equal(parts["cl_loss"], info_nce(u, vb, 0.07, ids))


@pytest.mark.parametrize("variant", PENALTIES)
def test_alpha_increases_penalty(variant: Any):
    u, vb, vt, vi, ids = batch(4, 8, 6, n_ids=8)
    losses = [
        weak_modality_penalized(u, vb, vt, vi, 0.1, a, ids, variant, "batch")["wpcl_loss"]
        for a in (0.0, 0.5, 2.0)
    ]
    assert losses[0] < losses[1] < losses[2]


def test_weak_choice_batch_and_sample():
    u, vb, vt, vi, ids = batch(5, 8, 4, n_ids=8)
    vi = u.clone()  # the image view is the sequence itself: image loss is small, text is weak
    parts = weak_modality_penalized(u, vb, vt, vi, 0.1, 1.0, ids, "reweight", "batch")
    assert parts["loss_image"] < parts["loss_text"]
    assert parts["weak_image_share"].item() == 0.0
    text_as_weak = info_nce(u, vt, 0.1, ids)
    torch.testing.assert_close(parts["wpcl_loss"], parts["cl_loss"] + text_as_weak)
    vi_mixed = torch.cat([u[:3], -u[3:]])  # images help samples 0-2 and mislead 3-7
    per_sample = weak_modality_penalized(u, vb, vt, vi_mixed, 0.1, 1.0, ids, "reweight", "sample")
    assert 0.0 < per_sample["weak_image_share"].item() < 1.0


# ----------------------------------------------------------------------------- CRTR


@FAST
@given(
    seed=seeds,
    n=sizes,
    dim=dims,
    tau_t=temps,
    variant=st.sampled_from(TOPOLOGIES),
    mask=st.integers(0, 127),
)
def test_topology_matches_loop(seed: int, n: int, dim: int, tau_t: float, variant: Any, mask: int):
    _, vb, vt, vi, _ = batch(seed, n, dim, n_ids=4)
    weak = [bool(mask >> i & 1) for i in range(n)]  # a per-item (per-sample) weak choice
    got = relational_topology(vb, vt, vi, tau_t, variant, torch.tensor(weak))
    want = ref_topology(vb, vt, vi, tau_t, variant, weak)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert got >= -1e-12


@pytest.mark.parametrize("variant", TOPOLOGIES)
def test_topology_zero_for_shared_structure_and_positive_after_perturbation(variant: Any):
    g = torch.Generator().manual_seed(6)
    vt = torch.randn(8, 5, generator=g)
    rotations = [torch.linalg.qr(torch.randn(5, 5, generator=g))[0] for _ in range(2)]
    for weak in (True, False):
        same = relational_topology(vt, vt, vt, 0.1, variant, weak)
        rotated = relational_topology(vt @ rotations[0], vt, vt @ rotations[1], 0.1, variant, weak)
        assert same.item() == pytest.approx(0.0, abs=1e-6)
        assert rotated.item() == pytest.approx(0.0, abs=1e-5)
        noisy = vt + 0.5 * torch.randn(8, 5, generator=g)
        assert relational_topology(vt, vt, noisy, 0.1, variant, weak) > 1e-3


@pytest.mark.parametrize(
    ("variant", "weak", "no_grad", "with_grad"),
    [
        ("strong_to_weak", True, ("v_text", "v_both"), ("v_image",)),
        ("strong_to_weak", False, ("v_image", "v_both"), ("v_text",)),
        ("symmetric", True, ("v_both",), ("v_text", "v_image")),
        ("fused_anchor", True, ("v_both",), ("v_text", "v_image")),
    ],
)
def test_stop_gradient(variant: Any, weak: bool, no_grad: tuple, with_grad: tuple):
    g = torch.Generator().manual_seed(7)
    views = {k: torch.randn(6, 4, generator=g, requires_grad=True) for k in ("v_both", "v_text")}
    views["v_image"] = torch.randn(6, 4, generator=g, requires_grad=True)
    relational_topology(
        **views, topology_temperature=0.2, variant=variant, weak_is_image=weak
    ).backward()
    for name in no_grad:
        grad = views[name].grad
        assert grad is None or not grad.any(), name
    for name in with_grad:
        grad = views[name].grad
        assert grad is not None and grad.abs().sum() > 1e-6, name


def test_topology_small_batch_and_bad_input():
    v = torch.randn(1, 4)
    assert relational_topology(v, v, v, 0.1, "symmetric", True).item() == 0.0
    v3 = torch.randn(3, 4)
    with pytest.raises(ValueError, match="v_image"):
        relational_topology(v3, v3, torch.randn(3, 5), 0.1, "symmetric", True)
    with pytest.raises(ValueError, match="weak_is_image"):
        relational_topology(v3, v3, v3, 0.1, "strong_to_weak", torch.tensor([True, False]))
    with pytest.raises(ValueError, match="variant"):
        relational_topology(v3, v3, v3, 0.1, "nope", True)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- total


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("gran", GRANULARITIES)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_vlm2rec_loss_matches_loop(penalty: Any, gran: Any, topology: Any):
    u, vb, vt, vi, ids = batch(8, 7, 4, n_ids=5)
    kw = dict(penalty_variant=penalty, weak_modality=gran, topology_variant=topology)
    parts = full_loss(u, vb, vt, vi, ids, **kw)
    assert set(parts) == set(PARTS)
    want, weak = ref_wpcl(u, vb, vt, vi, 0.1, 0.5, ids, penalty, gran)
    want["topo_loss"] = ref_topology(vb, vt, vi, 0.2, topology, weak)
    want["loss"] = want["wpcl_loss"] + 0.3 * want["topo_loss"]
    for name, value in want.items():
        torch.testing.assert_close(parts[name], torch.tensor(value, dtype=torch.float64), msg=name)
    assert not parts["loss_text"].requires_grad and not parts["weak_image_share"].requires_grad


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_alpha_beta_zero_is_exactly_info_nce_with_gradients(penalty: Any, topology: Any):
    inputs = [t.requires_grad_() for t in batch(9, 8, 6, n_ids=5, dtype=torch.float32)[:4]]
    ids = batch(9, 8, 6, n_ids=5)[4]
    parts = full_loss(*inputs, ids, alpha=0.0, beta=0.0, penalty_variant=penalty,
                      topology_variant=topology)  # fmt: skip
    assert parts["topo_loss"] > 0  # the term is there, it is just weighted by 0
    plain = info_nce(inputs[0], inputs[1], 0.1, ids)
    assert torch.equal(parts["loss"], plain)
    grads = torch.autograd.grad(parts["loss"], inputs[:2])
    torch.testing.assert_close(grads, torch.autograd.grad(plain, inputs[:2]), rtol=0, atol=0)


def test_combine_beta():
    parts = {"wpcl_loss": torch.tensor(1.25), "topo_loss": torch.tensor(0.3)}
    assert torch.equal(combine(parts, 0.0), parts["wpcl_loss"])
    torch.testing.assert_close(combine(parts, 2.0), torch.tensor(1.85))
    with pytest.raises(ValueError, match="beta"):
        combine(parts, -1.0)


@FAST
@given(seed=seeds, n=sizes, penalty=st.sampled_from(PENALTIES), gran=st.sampled_from(GRANULARITIES),
       topology=st.sampled_from(TOPOLOGIES))  # fmt: skip
def test_permutation_equivariance(seed: int, n: int, penalty: Any, gran: Any, topology: Any):
    u, vb, vt, vi, ids = batch(seed, n, 4, n_ids=4)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    kw = dict(penalty_variant=penalty, weak_modality=gran, topology_variant=topology)
    base = full_loss(u, vb, vt, vi, ids, **kw)
    permuted = full_loss(u[perm], vb[perm], vt[perm], vi[perm], ids[perm], **kw)
    for name in PARTS:
        torch.testing.assert_close(permuted[name], base[name], msg=name)


@FAST
@given(seed=seeds, n=sizes, penalty=st.sampled_from(PENALTIES), gran=st.sampled_from(GRANULARITIES),
       topology=st.sampled_from(TOPOLOGIES), scale=st.floats(0.1, 10.0))  # fmt: skip
def test_rotation_and_scale_invariance(
    seed: int, n: int, penalty: Any, gran: Any, topology: Any, scale: float
):
    u, vb, vt, vi, ids = batch(seed, n, 5, n_ids=4)
    q = torch.linalg.qr(
        torch.randn(5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )[0]
    kw = dict(penalty_variant=penalty, weak_modality=gran, topology_variant=topology)
    base = full_loss(u, vb, vt, vi, ids, **kw)
    turned = full_loss(scale * u @ q, vb @ q, vt @ q, scale * vi @ q, ids, **kw)
    for name in PARTS:
        torch.testing.assert_close(turned[name], base[name], msg=name)


def test_gradcheck_float64():
    inputs = [t.requires_grad_() for t in batch(10, 5, 3, n_ids=3)[:4]]
    ids = batch(10, 5, 3, n_ids=3)[4]
    # Only the symmetric topology: stop-gradients make the analytic gradient differ on purpose.
    for penalty, topology in (("hard_negative", "symmetric"), ("reweight", "symmetric")):
        fn = lambda *xs, p=penalty, t=topology: full_loss(  # noqa: E731
            *xs, ids, penalty_variant=p, weak_modality="sample", topology_variant=t
        )["loss"]
        assert torch.autograd.gradcheck(fn, tuple(inputs))


def test_bf16_inputs_and_autocast_give_float32():
    u, vb, vt, vi, ids = batch(11, 8, 6, n_ids=6, dtype=torch.float32)
    reference = full_loss(u, vb, vt, vi, ids, penalty_variant="hard_negative")
    half = full_loss(*(t.bfloat16() for t in (u, vb, vt, vi)), ids, penalty_variant="hard_negative")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = full_loss(u, vb, vt, vi, ids, penalty_variant="hard_negative")
    for name in PARTS:
        assert half[name].dtype == torch.float32, name
        assert autocast[name].dtype == torch.float32, name
        torch.testing.assert_close(autocast[name], reference[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(half[name], reference[name], rtol=0.05, atol=0.05, msg=name)


def test_shape_errors_name_the_argument():
    u, vb, vt, vi, ids = batch(12, 4, 3, n_ids=4)
    with pytest.raises(ValueError, match="v_image"):
        full_loss(u, vb, vt, vi[:3], ids)
    with pytest.raises(ValueError, match="item_ids"):
        full_loss(u, vb, vt, vi, ids[:3])
    with pytest.raises(ValueError, match="variant"):
        full_loss(u, vb, vt, vi, ids, penalty_variant="bogus")
    with pytest.raises(ValueError, match="granularity"):
        full_loss(u, vb, vt, vi, ids, weak_modality="bogus")
    with pytest.raises(ValueError, match="alpha"):
        full_loss(u, vb, vt, vi, ids, alpha=-0.1)
