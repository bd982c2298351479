"""Collapse diagnostics: formulas, zero cases and the anisotropy / effective-rank extremes."""

from __future__ import annotations

import math

import pytest
import torch

from vlm2rec.diagnostics import (
    anisotropy,
    effective_rank,
    embedding_diagnostics,
    modality_diagnostics,
)


def _metrics(fused: float, text: float, image: float, split: str = "val") -> dict[str, float]:
    return {
        f"{split}/ndcg@10": fused,
        f"{split}/ndcg@10/text": text,
        f"{split}/ndcg@10/image": image,
    }


def test_modality_diagnostics_formulas() -> None:
    out = modality_diagnostics(_metrics(0.4, 0.3, 0.1), "val")
    assert out == {
        "val/reliance_text": pytest.approx(1 - 0.1 / 0.4),
        "val/reliance_image": pytest.approx(1 - 0.3 / 0.4),
        "val/modality_balance": pytest.approx(0.1 / 0.3),
    }


def test_modality_diagnostics_single_view_beats_fused_gives_negative_reliance() -> None:
    out = modality_diagnostics(_metrics(0.2, 0.3, 0.0, "test"), "test")
    assert out["test/reliance_image"] == pytest.approx(1 - 0.3 / 0.2)
    assert out["test/reliance_text"] == pytest.approx(1.0)
    assert out["test/modality_balance"] == 0.0


def test_modality_diagnostics_zero_cases() -> None:
    out = modality_diagnostics(_metrics(0.0, 0.2, 0.1), "val")
    assert out["val/reliance_text"] == 0.0 and out["val/reliance_image"] == 0.0
    assert out["val/modality_balance"] == pytest.approx(0.5)
    both_zero = modality_diagnostics(_metrics(0.3, 0.0, 0.0), "val")
    assert both_zero["val/modality_balance"] == 0.0
    assert both_zero["val/reliance_text"] == 1.0


def test_modality_diagnostics_missing_key_named() -> None:
    metrics = _metrics(0.4, 0.3, 0.1)
    del metrics["val/ndcg@10/image"]
    with pytest.raises(KeyError, match="val/ndcg@10/image"):
        modality_diagnostics(metrics, "val")


def test_anisotropy_identical_rows_is_one() -> None:
    row = torch.tensor([[0.3, -1.2, 2.0, 0.5]])
    # different positive scales do not change the direction
    x = row * torch.tensor([[1.0], [2.0], [0.5], [7.0]])
    assert anisotropy(x) == pytest.approx(1.0)


def test_anisotropy_orthonormal_rows_is_small() -> None:
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
    # +/- pairs of orthonormal rows cancel exactly; plain orthonormal rows give 1/sqrt(D)
    assert anisotropy(torch.cat([q, -q])) == pytest.approx(0.0, abs=1e-12)
    assert anisotropy(q) == pytest.approx(1 / math.sqrt(16))


def test_anisotropy_excludes_zero_rows_and_is_nan_for_none() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert anisotropy(x) == pytest.approx(1.0)  # zeros would otherwise dilute it to 1/3
    assert math.isnan(anisotropy(torch.zeros(3, 2)))


def test_anisotropy_matches_direct_formula() -> None:
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(1)) + 0.5
    ref = torch.nn.functional.normalize(x.double(), dim=1).mean(0).norm()
    assert anisotropy(x) == pytest.approx(float(ref))


def test_effective_rank_identity_and_rank_one() -> None:
    assert effective_rank(torch.eye(12)) == pytest.approx(12.0)
    u = torch.randn(300, 1, generator=torch.Generator().manual_seed(2))
    v = torch.randn(1, 24, generator=torch.Generator().manual_seed(3))
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-9)


def test_effective_rank_rank_one_with_many_rows_is_one() -> None:
    # Gram rounding noise alone reads ~1.00002 here; the numerical-rank cut must remove it
    u = torch.randn(20000, 1, generator=torch.Generator().manual_seed(5))
    v = torch.randn(1, 64, generator=torch.Generator().manual_seed(6))
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-9)


def test_effective_rank_matches_svd_and_zero_cases() -> None:
    x = torch.randn(50, 10, generator=torch.Generator().manual_seed(4)) * torch.linspace(0.1, 3, 10)
    s = torch.linalg.svdvals(x.double())
    p = s / s.sum()
    assert effective_rank(x) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
    assert effective_rank(torch.zeros(5, 3)) == 0.0
    assert effective_rank(torch.zeros(0, 3)) == 0.0


def test_effective_rank_wide_matrix_counts_rows() -> None:
    # 3 orthogonal equal-energy rows in 40 dims: rank 3 whatever D is
    assert effective_rank(torch.eye(40)[:3] * 5.0) == pytest.approx(3.0)


def test_embedding_diagnostics_drops_padding_and_names_keys() -> None:
    text = torch.cat([torch.full((1, 4), 9.0), torch.eye(4)])  # padding row would bias anisotropy
    image = torch.cat([torch.zeros(1, 4), torch.ones(6, 4)])
    out = embedding_diagnostics({"both": text, "text": text, "image": image}, "val")
    assert set(out) == {
        "val/anisotropy_text",
        "val/erank_text",
        "val/anisotropy_image",
        "val/erank_image",
    }
    assert out["val/anisotropy_text"] == pytest.approx(0.5)  # mean of e_1..e_4 has norm 1/2
    assert out["val/erank_text"] == pytest.approx(4.0)
    assert out["val/anisotropy_image"] == pytest.approx(1.0)
    assert out["val/erank_image"] == pytest.approx(1.0)


def test_bad_shape_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        anisotropy(torch.ones(4))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        effective_rank(torch.ones(4))
