"""study/callbacks.py helpers that need no running study."""

from __future__ import annotations

from study.callbacks import hparams_order


def test_the_hparams_table_leads_with_the_study_metric_then_ranking_then_diagnostics() -> None:
    names = [
        "val/anisotropy_image",
        "val/erank_text",
        "val/modality_balance",
        "val/mrr",
        "val/ndcg@10/image",
        "val/ndcg@10/text",
        "val/oracle/ndcg@10",
        "val/recall@20",
    ]
    assert hparams_order("val/ndcg@10", names) == (
        "val/ndcg@10",
        "val/ndcg@10/image",
        "val/ndcg@10/text",
        "val/mrr",
        "val/oracle/ndcg@10",
        "val/recall@20",
        "val/anisotropy_image",
        "val/erank_text",
        "val/modality_balance",
    )
    assert hparams_order("val/mrr", names)[:2] == ("val/mrr", "val/ndcg@10/image")
