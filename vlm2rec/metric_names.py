"""The metric names a run reports, found by running the code that reports them.

A study names metrics in files (``[study].metric`` for Tune, Optuna and ASHA; ``eval.metric`` for
``fit()``'s model selection). A misspelt one used to cost a whole trial before anything noticed
that no report carried it. :func:`reported_metrics` answers "which keys does every epoch of a run
with this config report" with no dataset and no model, in well under a second:

* the evaluation keys come from :func:`vlm2rec.model_eval.evaluate_model` itself, run on a stub
  embedder and a four-user split, so ``{split}/repeat_rate``, the sampled protocol
  (``eval.sampled_negatives``), the per-view keys (``eval.views``) and the diagnostics come and go
  exactly as in a real run;
* the generator's oracles (``{split}/oracle/...``) from :func:`vlm2rec.data.oracle.oracle_metrics`
  on the same split, when the run's data is the synthetic benchmark;
* the training keys from :func:`vlm2rec.losses.vlm2rec_loss` on a random batch, as ``train/<part>``,
  plus the learning rate ``fit()`` adds.

Nothing here is a hand-written list of names, so it cannot drift from the reports;
``tests/test_train.py`` compares it with the keys of a real ``fit()``.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from vlm2rec.config import EvalConfig, LossConfig, RunConfig, SyntheticConfig
from vlm2rec.data.splits import EvalExamples
from vlm2rec.distributed import DistInfo
from vlm2rec.model_eval import evaluate_model, fixed_negatives

__all__ = ["TRAIN_LR", "eval_metric_names", "reported_metrics", "train_metric_names"]

#: The learning rate ``fit()`` reports beside the loss parts (vlm2rec/train.py, ``_train_epoch``).
TRAIN_LR = "train/lr"
_USERS = 4  #: users of the stub split: enough for every metric, the sampled protocol included
_DIM = 4  #: embedding width of the stub embedder


class _StubEmbedder(nn.Module):
    """What :func:`~vlm2rec.model_eval.evaluate_model` needs of an embedder, with fixed random
    vectors instead of a model: ``catalogue.num_items``, ``device``, ``encode_items(ids, view)``
    and ``encode_sequences(histories)``."""

    def __init__(self, num_items: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(num_items + 1, _DIM, generator=gen), False)
        self.view_shift = {v: torch.randn(_DIM, generator=gen) for v in ("both", "text", "image")}
        self.catalogue = SimpleNamespace(num_items=num_items)
        self.device = torch.device("cpu")

    def encode_items(self, ids: Tensor, view: str) -> Tensor:
        return nn.functional.normalize(self.table[ids] + self.view_shift[view], dim=-1)

    def encode_sequences(self, histories: Tensor) -> Tensor:
        return nn.functional.normalize(self.table[histories].sum(1), dim=-1)


def _stub_split(history_length: int) -> EvalExamples:
    """Four users who each saw one item (ids 1-4) and whose target is the next of those items."""
    histories = np.zeros((_USERS, history_length), dtype=np.int64)
    histories[:, -1] = np.arange(1, _USERS + 1)
    return EvalExamples(
        user_ids=np.arange(_USERS, dtype=np.int64),
        histories=histories,
        targets=np.roll(np.arange(1, _USERS + 1, dtype=np.int64), -1),
        seen_indptr=np.arange(_USERS + 1, dtype=np.int64),
        seen_items=np.arange(1, _USERS + 1, dtype=np.int64),
    )


def eval_metric_names(
    cfg: EvalConfig, split: str, history_length: int, synthetic: SyntheticConfig | None
) -> frozenset[str]:
    """The ``{split}/*`` keys a run scores for ``split`` (``val`` or ``test``) under ``cfg``;
    ``synthetic``: the generator's knobs when the data is the synthetic benchmark (its oracles
    are reported beside), else None."""
    examples = _stub_split(history_length)
    # Room for the sampled protocol's negatives beside each user's target and seen item.
    num_items = max(2 * _USERS, cfg.sampled_negatives + _USERS + 2)
    embedder = cast(Any, _StubEmbedder(num_items))
    # Any fingerprint: only the negatives' seed depends on it, never their names.
    negatives = fixed_negatives(examples, split, cfg, num_items, "0" * 16)
    names = set(evaluate_model(embedder, examples, split, cfg, DistInfo(), negatives))
    if synthetic is not None:
        from vlm2rec.data.oracle import oracle_metrics  # the generator: only for synthetic data

        # The oracles need a catalogue the generator knows: the stub split's items 1-4 are in it.
        knobs = dataclasses.replace(synthetic, items=max(synthetic.items, _USERS))
        names |= set(oracle_metrics(knobs, examples, split, cfg))
    return frozenset(names)


def train_metric_names(cfg: LossConfig) -> frozenset[str]:
    """The ``train/*`` keys of every epoch: each part of the objective, and the learning rate."""
    from vlm2rec.train import objective

    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(_USERS, _DIM, generator=gen) for _ in range(4)]
    parts = objective(cfg, views, torch.arange(1, _USERS + 1))
    return frozenset({f"train/{k}" for k in parts} | {TRAIN_LR})


def reported_metrics(cfg: RunConfig, synthetic: bool) -> frozenset[str]:
    """Every ``val/*`` and ``train/*`` key that each validated epoch of a run with ``cfg``
    reports (``synthetic``: the data is the synthetic benchmark). The last epoch also reports
    ``test/*``, the same names as ``val/*``; a study metric must be one of the ``val/*`` keys."""
    knobs = cfg.data.synthetic if synthetic else None
    val = eval_metric_names(cfg.eval, "val", cfg.data.history_length, knobs)
    return val | train_metric_names(cfg.loss)
