"""The evaluation keys one split reports (docs/ARCHITECTURE.md, "one name per number")."""

from __future__ import annotations

KS = (5, 10, 20)


def split_keys(split: str, synthetic: bool = True) -> set[str]:
    """Every ``{split}/*`` key of a run's evaluation; ``synthetic`` adds the generator's oracles."""
    base = [f"{split}/{m}@{k}" for m in ("recall", "ndcg") for k in KS] + [f"{split}/mrr"]
    keys = {f"{b}{sfx}" for b in base for sfx in ("", "/text", "/image")}
    keys |= {f"{split}/{n}" for n in ("modality_balance", "reliance_text", "reliance_image")}
    keys |= {f"{split}/{n}_{v}" for n in ("anisotropy", "erank") for v in ("text", "image")}
    keys |= {f"{split}/repeat_rate"}
    if synthetic:  # vlm2rec.data.oracle
        oracle = [f"{split}/oracle/{m}@10" for m in ("recall", "ndcg")]
        keys |= {f"{o}{sfx}" for o in oracle for sfx in ("", "/text", "/image")}
    return keys
