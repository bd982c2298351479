"""Shared seeded tiny fixtures (offline, built once per test session)."""

from __future__ import annotations

import pytest

from vlm2rec.config import SyntheticConfig
from vlm2rec.data.schema import PreparedDataset
from vlm2rec.data.synthetic import prepare_synthetic

#: 60 users, 32 items filling the 4 x 4 x 2 attribute grid exactly once, 16-pixel images.
TINY_SYNTHETIC = SyntheticConfig(
    seed=0,
    users=60,
    items=32,
    shapes=4,
    brands=4,
    colours=2,
    min_length=5,
    max_length=10,
    image_size=16,
)


@pytest.fixture(scope="session")
def tiny_synthetic_config() -> SyntheticConfig:
    """The knobs :func:`tiny_dataset` was built with."""
    return TINY_SYNTHETIC


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    """A small synthetic prepared dataset on disk (read-only for tests: copy before changing it)."""
    return prepare_synthetic(TINY_SYNTHETIC, tmp_path_factory.mktemp("tiny_synthetic"))
