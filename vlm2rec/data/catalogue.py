"""Item contents indexed by item id, the form embedders consume."""

from __future__ import annotations

import dataclasses

from vlm2rec.data.schema import PreparedDataset

__all__ = ["Catalogue"]


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Titles, texts and encoded images of all items; index = item id, entry 0 is padding.

    An item may lack an image (``None``) or a text (``None``); its title is always present.
    """

    titles: tuple[str, ...]
    texts: tuple[str | None, ...]
    images: tuple[bytes | None, ...]

    def __post_init__(self) -> None:
        if not len(self.titles) == len(self.texts) == len(self.images):
            raise ValueError("Catalogue: titles, texts and images must have equal length")

    @property
    def num_items(self) -> int:
        """Number of real items (ids 1..num_items)."""
        return len(self.titles) - 1

    @classmethod
    def from_dataset(cls, ds: PreparedDataset) -> Catalogue:
        items = ds.items
        return cls(
            titles=("", *items.column("title").to_pylist()),
            texts=(None, *items.column("text").to_pylist()),
            images=(None, *items.column("image").to_pylist()),
        )
