"""``fit()``: VLM2Rec fine-tuning, identical under one process, ``torchrun`` and Ray Train.

The launcher owns the process group and passes a :class:`~vlm2rec.distributed.DistInfo`; ``fit`` wraps
the embedder in plain ``DistributedDataParallel`` when ``world_size > 1``. Each micro-step:

1. every rank encodes its slice of the global batch (sequence ``u`` and the target's three views);
2. the slices are all-gathered with autograd (``distributed.all_gather_with_grad``), so every rank
   evaluates the *global* VLM2Rec loss (``losses.vlm2rec_loss``): the weak-modality choice and the
   in-batch negatives are those of the whole batch;
3. backward; DDP averages the gradients, which with the gather's summed backward equals the gradient
   of the global loss in one process (the convention stated and tested in ``distributed.py``).

``fit`` reads as its steps, one function each (the torchtune recipe shape): :func:`_setup` builds
the run, :func:`_resume` loads a checkpoint into it, and every epoch is :func:`_train_epoch`, a
validation (every ``eval.every_epochs``; :func:`_select` keeps the best weights and decides early
stopping), the final test of the best weights after the last epoch (:func:`_final_test`), a
checkpoint (:func:`_checkpoint`, rank 0) and one ``reporter.report`` call on every rank.

Randomness has one source: each rank's torch RNG is reseeded from ``(seed, epoch, rank)`` before
every epoch (:func:`_seed_epoch`), so no RNG state is saved and a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlm2rec.checkpoint import (
    Progress,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from vlm2rec.config import LossConfig, RunConfig, to_dict
from vlm2rec.data.catalogue import Catalogue
from vlm2rec.data.loader import SequenceBatch, train_loader
from vlm2rec.data.oracle import oracle_metrics
from vlm2rec.data.prepare import ensure_dataset
from vlm2rec.data.splits import EvalExamples, Splits, make_splits
from vlm2rec.distributed import (
    DistInfo,
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_mean,
    barrier,
)
from vlm2rec.embedder import Embedder, build_embedder
from vlm2rec.losses import vlm2rec_loss
from vlm2rec.model_eval import autocast, evaluate_model, fixed_negatives
from vlm2rec.reporting import NullReporter, Reporter
from vlm2rec.selection import is_better

__all__ = [
    "EvalSplit",
    "FitResult",
    "NonFiniteLossError",
    "RunState",
    "build_run",
    "eval_split",
    "fit",
    "lr_factor",
    "objective",
    "score",
]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the message names the epoch, step and every loss part."""


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What a finished run hands back."""

    best_epoch: int  #: 1-based epoch of the best validation metric
    best_metric: float  #: its value
    best_val: dict[str, float]  #: every metric reported at the best epoch
    test: dict[str, float]  #: test/* metrics of the best checkpoint
    history: list[dict[str, float]]  #: one dict per epoch, as reported
    checkpoint_dir: Path | None  #: last checkpoint folder (holds best.safetensors), rank 0 only


@dataclasses.dataclass
class RunState:
    """The objects one run is made of (built by :func:`build_run`, reused by the CLI)."""

    cfg: RunConfig
    splits: Splits
    catalogue: Catalogue
    embedder: Embedder
    device: torch.device
    fingerprint: str
    synthetic: bool  #: the dataset is the synthetic benchmark built from ``cfg.data.synthetic``


def _device(cfg: RunConfig, dist: DistInfo) -> torch.device:
    if dist.device != "cpu" or cfg.train.device == "cpu":
        return torch.device(dist.device)
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def build_run(cfg: RunConfig, dist: DistInfo) -> RunState:
    """Dataset (built on rank 0 if missing), splits, catalogue and embedder, on every rank."""
    if dist.is_main:
        ensure_dataset(cfg.data)
    barrier(dist)
    ds = ensure_dataset(cfg.data)
    splits = make_splits(ds.interactions, cfg.data.history_length, cfg.data.min_sequence_length)
    catalogue = Catalogue.from_dataset(ds)
    device = _device(cfg, dist)
    embedder = build_embedder(cfg.embedder, catalogue, seed=cfg.seed, device=device)
    synthetic = ds.meta.get("name") == "synthetic"  # ensure_dataset checked its knobs = cfg's
    return RunState(cfg, splits, catalogue, embedder, device, ds.fingerprint, synthetic)


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """One split as a run scores it: its examples, the sampled protocol's fixed negatives and, on
    the synthetic benchmark, the generator's oracles (``vlm2rec.data.oracle``) reported beside."""

    name: str  #: "val" or "test"
    examples: EvalExamples
    negatives: np.ndarray | None  #: [U, eval.sampled_negatives], None when that is 0
    oracles: dict[str, float]  #: {split}/oracle/* on exactly these examples; empty if not synthetic


def eval_split(run: RunState, examples: EvalExamples, name: str) -> EvalSplit:
    """Everything about a split that does not depend on the model, computed once per run."""
    ev, n_items = run.cfg.eval, run.catalogue.num_items
    negatives = fixed_negatives(examples, name, ev, n_items, run.fingerprint)
    oracles = oracle_metrics(run.cfg.data.synthetic, examples, name, ev) if run.synthetic else {}
    return EvalSplit(name, examples, negatives, oracles)


def score(run: RunState, split: EvalSplit, dist: DistInfo) -> dict[str, float]:
    """Every ``{split}/*`` metric of the run's current weights, the oracles beside them."""
    ev = run.cfg.eval
    got = evaluate_model(run.embedder, split.examples, split.name, ev, dist, split.negatives)
    return got | split.oracles


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    r"""Linear warm-up then cosine decay: :math:`f = s/w` for :math:`s < w`, else
    :math:`f = m + (1-m)\,\tfrac12(1 + \cos(\pi\,(s-w)/(T-w)))` with floor ``min_ratio`` = m."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimiser(
    cfg: RunConfig, params: list[nn.Parameter], steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    total = cfg.train.epochs * steps_per_epoch
    warmup = int(o.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, o.min_lr_ratio)
    )
    return optimizer, scheduler


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed this rank's torch RNG (dropout) for ``epoch`` from ``(seed, epoch, rank)`` alone
    (epoch 0: the setup before the first epoch).

    The run's only seeding of the global torch RNG. A stream derived from the epoch needs no saved
    state, so a resumed run continues exactly on any number of ranks; restoring a checkpointed RNG
    state could not do that, because a checkpoint holds rank 0's state only.
    """
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


@dataclasses.dataclass
class _Training:
    """The state of one :func:`fit` call, advanced one epoch at a time."""

    cfg: RunConfig
    dist: DistInfo
    run: RunState
    model: nn.Module  #: the embedder, wrapped in DistributedDataParallel on several ranks
    loader: torch.utils.data.DataLoader[SequenceBatch]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    val: EvalSplit  #: the validation users (a seeded subsample if ``eval.val_users``)
    test: EvalSplit  #: every test user
    root: Path  #: checkpoints go to root/epoch_XXXX
    best: dict[str, torch.Tensor]  #: trainable weights of the best epoch so far
    progress: Progress = dataclasses.field(default_factory=Progress)
    ckpt: Path | None = None  #: the last checkpoint written (rank 0)


def _setup(cfg: RunConfig, dist: DistInfo, checkpoint_root: str | Path | None) -> _Training:
    """Data, model (DDP on several ranks), loader, optimiser and schedule of a fresh run."""
    _seed_epoch(cfg.seed, 0, dist.rank)
    run = build_run(cfg, dist)
    model: nn.Module = run.embedder  # its forward() encodes sequences and the three views
    if dist.is_distributed:
        ids = [run.device.index] if run.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=True
        )
    loader = train_loader(
        run.splits.train,
        cfg.train.batch_size,
        dist.rank,
        dist.world_size,
        cfg.seed,
        cfg.data.loader_workers,
    )
    params = [p for p in run.embedder.parameters() if p.requires_grad]
    steps_per_epoch = max(1, len(loader) // cfg.optim.grad_accum_steps)
    optimizer, scheduler = _optimiser(cfg, params, steps_per_epoch)
    val = eval_split(run, run.splits.val.subsample(cfg.eval.val_users, cfg.seed), "val")
    test = eval_split(run, run.splits.test, "test")
    root = Path(checkpoint_root) if checkpoint_root else Path(tempfile.mkdtemp(prefix="vlm2rec-"))
    best = _clone(run.embedder.trainable_state_dict())
    return _Training(cfg, dist, run, model, loader, optimizer, scheduler, val, test, root, best)


def _resume(t: _Training, folder: Path) -> None:
    """Continue from a checkpoint of :func:`_checkpoint`: weights, best weights, optimiser,
    schedule and progress (the RNG needs nothing: every epoch is reseeded). The ``rng`` entry of
    checkpoints written before that is ignored."""
    weights, t.best, state, t.progress = load_checkpoint(folder)
    t.run.embedder.load_trainable_state_dict(weights)
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])


def _epochs_left(t: _Training) -> range:
    """The epochs still to train; none when the run already stopped early (resuming a finished
    run must not train it further)."""
    patience, p = t.cfg.train.early_stopping_patience, t.progress
    last = p.epoch if 0 < patience <= p.bad_validations else t.cfg.train.epochs
    return range(p.epoch + 1, last + 1)


def objective(
    lc: LossConfig, views: list[torch.Tensor], item_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``losses.vlm2rec_loss`` with the run's loss settings; ``views`` = [u, v_both, v_text,
    v_image], each [B, D], ``item_ids`` [B]. Every named loss part, the total under ``loss``."""
    u, both, text, image = views
    return vlm2rec_loss(
        u,
        both,
        text,
        image,
        item_ids,
        temperature=lc.temperature,
        alpha=lc.alpha,
        beta=lc.beta,
        topology_temperature=lc.topology_temperature,
        penalty_variant=lc.penalty_variant,
        weak_modality=lc.weak_modality,
        topology_variant=lc.topology_variant,
    )


def _loss_parts(model: nn.Module, batch: SequenceBatch, lc: LossConfig) -> dict[str, torch.Tensor]:
    """Encode the batch (sequences + the targets' three views), gather it, and score the global
    batch with the VLM2Rec objective; returns every named loss part (``losses.vlm2rec_loss``)."""
    u, v = model(batch.histories, batch.targets)  # [b, D], {view: [b, D]}
    views = [u, v["both"], v["text"], v["image"]]
    item_ids = batch.targets
    if lc.gather:  # global in-batch negatives: 4 x [W*b, D]
        views = [all_gather_with_grad(t) for t in views]
        item_ids = all_gather_no_grad(item_ids)
    return objective(lc, views, item_ids)


def _non_finite_ranks(loss: torch.Tensor, t: _Training) -> list[int]:
    """The ranks whose loss of this micro-step is NaN/inf, the same list on every rank.

    A rank that stopped alone would leave the others waiting forever in the backward's
    all-reduce. With ``loss.gather = false`` each rank's loss is its own, so that happened; with
    it every rank scores the same global batch and they stop together, but agreeing costs one
    all-gather of one number per step (beside the four embedding gathers), so they always agree.
    """
    finite = torch.isfinite(loss.detach()).reshape(1).float()  # [1] on the loss's device
    if not t.dist.is_distributed:
        return [] if bool(finite) else [t.dist.rank]
    every = all_gather_no_grad(finite)  # [W]
    return [r for r, ok in enumerate(every.tolist()) if not ok]


def _stop_if_non_finite(
    parts: dict[str, torch.Tensor], t: _Training, epoch: int, step: int
) -> None:
    """Raise :class:`NonFiniteLossError` on every rank when any rank's loss diverged; the message
    names the epoch, the step, the ranks and this rank's loss parts."""
    bad = _non_finite_ranks(parts["loss"], t)
    if not bad:
        return
    detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())
    at = f"non-finite loss at epoch {epoch}, step {step}"
    if t.dist.is_distributed:
        ranks = ", ".join(map(str, bad))
        at += f" on rank {ranks} of {t.dist.world_size}; this rank ({t.dist.rank})"
    raise NonFiniteLossError(f"{at}: {detail}")


def _train_epoch(t: _Training, epoch: int) -> dict[str, float]:
    """One pass over this rank's batches of ``epoch`` (its shuffle and its RNG stream both derived
    from the epoch); returns the mean of every loss part (``train/*``), averaged over ranks."""
    cfg, model, optimizer, scheduler = t.cfg, t.model, t.optimizer, t.scheduler
    t.loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
    _seed_epoch(cfg.seed, epoch, t.dist.rank)
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    accum = cfg.optim.grad_accum_steps
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(t.loader):
        batch = batch.to(t.run.device)
        sync = (i + 1) % accum == 0
        # Gradients are synchronised only on the micro-step that ends an accumulation window.
        skip_sync = isinstance(model, nn.parallel.DistributedDataParallel) and not sync
        with model.no_sync() if skip_sync else contextlib.nullcontext(), autocast(t.run.device):  # type: ignore[operator]
            parts = _loss_parts(model, batch, cfg.loss)
        loss = parts["loss"]
        _stop_if_non_finite(parts, t, epoch, i + 1)
        (loss / accum).backward()
        if sync:
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        for k, v in parts.items():
            sums[f"train/{k}"] += float(v.detach())
        steps += 1
    means = {k: v / max(1, steps) for k, v in sums.items()}
    means["train/lr"] = float(scheduler.get_last_lr()[0])
    return all_reduce_mean(means, t.dist)


def _validates(cfg: RunConfig, epoch: int) -> bool:
    """Every ``eval.every_epochs``-th epoch validates, and always the last one."""
    return epoch % cfg.eval.every_epochs == 0 or epoch == cfg.train.epochs


def _select(t: _Training, epoch: int, value: float) -> bool:
    """Track the selection metric: an improvement makes ``epoch`` the best (its weights are kept
    for the final test), anything else counts against the patience. True: stop early now."""
    p = t.progress
    if np.isfinite(value) and is_better(value, p.best_metric, t.cfg.eval.mode):
        p.best_metric, p.best_epoch, p.bad_validations = value, epoch, 0
        t.best = _clone(t.run.embedder.trainable_state_dict())
    else:
        p.bad_validations += 1
    patience = t.cfg.train.early_stopping_patience
    return patience > 0 and p.bad_validations >= patience


def _final_test(t: _Training) -> dict[str, float]:
    """The run's ``test/*`` metrics: the best weights swapped in (the current ones restored after).

    The one place where the final test metrics are assembled.
    """
    embedder = t.run.embedder
    current = _clone(embedder.trainable_state_dict())
    embedder.load_trainable_state_dict(t.best)
    try:
        return score(t.run, t.test, t.dist)
    finally:
        embedder.load_trainable_state_dict(current)


def _checkpoint(t: _Training, epoch: int) -> Path | None:
    """Rank 0 writes ``epoch_XXXX`` (and prunes old ones); returns it there, None elsewhere."""
    if not t.dist.is_main:
        return None
    state = {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict()}
    t.ckpt = save_checkpoint(
        t.root / f"epoch_{epoch:04d}",
        t.run.embedder.trainable_state_dict(),
        t.best,
        state,
        t.progress,
        to_dict(t.cfg),
    )
    prune_checkpoints(t.root, t.cfg.train.keep_checkpoints)
    return t.ckpt


def fit(
    cfg: RunConfig,
    dist: DistInfo | None = None,
    reporter: Reporter | None = None,
    resume_from: str | Path | None = None,
    checkpoint_root: str | Path | None = None,
) -> FitResult:
    """Train, validate each epoch, checkpoint, and test the best checkpoint at the end.

    ``resume_from`` is a checkpoint folder written by a previous call (continues exactly, on CPU with
    the same seed). Checkpoints go to ``checkpoint_root/epoch_XXXX`` (a temporary folder if ``None``).
    """
    dist = dist or DistInfo()
    reporter = reporter or NullReporter()
    t = _setup(cfg, dist, checkpoint_root)
    if resume_from is not None:
        _resume(t, Path(resume_from))
    for epoch in _epochs_left(t):
        start = time.perf_counter()
        metrics = {"epoch": float(epoch), **_train_epoch(t, epoch)}
        stop = False
        if _validates(cfg, epoch):
            metrics.update(score(t.run, t.val, dist))
            stop = _select(t, epoch, metrics[cfg.eval.metric])
        if epoch == cfg.train.epochs or stop:
            metrics.update(_final_test(t))
        metrics["time/epoch_s"] = time.perf_counter() - start
        t.progress.epoch = epoch
        t.progress.history.append(metrics)
        reporter.report(metrics, epoch, _checkpoint(t, epoch))
        if stop:
            break
    return _result(t)


def _result(t: _Training) -> FitResult:
    progress = t.progress
    hist = progress.history
    best_row = hist[progress.best_epoch - 1] if progress.best_epoch else (hist[-1] if hist else {})
    return FitResult(
        best_epoch=progress.best_epoch,
        best_metric=float("nan") if progress.best_metric is None else progress.best_metric,
        best_val={k: v for k, v in best_row.items() if k.startswith("val/")},
        test={k: v for k, v in (hist[-1] if hist else {}).items() if k.startswith("test/")},
        history=hist,
        checkpoint_dir=t.ckpt or latest_checkpoint(t.root),
    )
