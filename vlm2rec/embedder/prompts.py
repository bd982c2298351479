"""Item and history texts shared by the backends, truncated to ``embedder.max_text_tokens``.

Truncation acts on the *content* (titles, texts, history lines), never on the template around it,
so the instruction at the end of a decoder prompt, whose last token is the embedding, always stays.
Item content keeps its head; a history keeps its tail (the most recent items).
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any, Literal

from vlm2rec.data.catalogue import Catalogue

__all__ = ["TextClipper", "check_template", "history_line", "item_text"]


def check_template(template: str, allowed: Iterable[str], key: str) -> None:
    """A prompt template may only use the named placeholders; errors name the config key."""
    allowed = set(allowed)
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise ValueError(f"{key}: not a valid format template ({exc}): {template!r}") from exc
    unknown = sorted(used - allowed)
    if unknown:
        raise ValueError(f"{key}: unknown placeholders {unknown}; allowed {sorted(allowed)}")


def item_text(title: str, text: str) -> str:
    """One item as plain text: its title, then its text on the next line when there is one."""
    return f"{title}\n{text}" if text else title


def history_line(title: str, text: str) -> str:
    """One item as a line of a history: ``title: text`` (newlines folded so lines stay lines)."""
    line = f"{title}: {text}" if text else title
    return " ".join(line.split())


class TextClipper:
    """Token-budgeted item fields, cached per item (the catalogue never changes during a run).

    Args:
        catalogue: the items.
        tokenizer: the model's tokenizer (counts tokens exactly as the model will see them).
        max_tokens: the budget per item (title first, the text gets what is left) and per history.
    """

    def __init__(self, catalogue: Catalogue, tokenizer: Any, max_tokens: int) -> None:
        self.catalogue = catalogue
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self._fields: dict[int, tuple[str, str]] = {}

    def clip(
        self, text: str, budget: int, keep: Literal["head", "tail"] = "head"
    ) -> tuple[str, int]:
        """``text`` cut to at most ``budget`` tokens; returns the text and its token count."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return text, len(ids)
        kept = ids[:budget] if keep == "head" else ids[len(ids) - budget :]
        return self.tokenizer.decode(kept), len(kept)

    def fields(self, item_id: int) -> tuple[str, str]:
        """``(title, text)`` of an item within the budget; a missing text is ``""``."""
        if item_id not in self._fields:
            title, n_title = self.clip(self.catalogue.titles[item_id], self.max_tokens)
            raw = self.catalogue.texts[item_id] or ""
            text = self.clip(raw, self.max_tokens - n_title)[0] if n_title < self.max_tokens else ""
            self._fields[item_id] = (title, text)
        return self._fields[item_id]

    def history(self, item_ids: list[int]) -> str:
        """The items as lines, oldest first, keeping the most recent ``max_tokens`` tokens."""
        lines = "\n".join(history_line(*self.fields(i)) for i in item_ids)
        return self.clip(lines, self.max_tokens, keep="tail")[0]
