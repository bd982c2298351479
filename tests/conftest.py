"""Shared seeded tiny fixtures (offline, built once per test session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vlm2rec.config import SyntheticConfig
from vlm2rec.data.prepare import prepare_synthetic
from vlm2rec.data.schema import PreparedDataset

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


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray instance shared by every Ray test (start-up costs ~10 s).

    Logical CPUs may exceed physical cores (docs/ARCHITECTURE.md, "Ray traps"): 4 lets a trial
    driver (0.5 CPU) and its two 0.5-CPU Train workers run beside a second trial. The dashboard
    stays on: Train needs it to free the workers of trials that ASHA stops. Token authentication
    is on, as in a local study.
    """
    import os

    import ray

    from study.tune_runner import STUDY_ENV, start_local_ray, use_auth_mode

    for key, value in STUDY_ENV.items():
        os.environ.setdefault(key, value)
    use_auth_mode()  # token auth, as a local study runs it
    start_local_ray(num_cpus=4)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a test module: tiny models gain nothing from two, and on a loaded
    2-core machine OpenMP's spinning threads made the same fit 20x slower. Module scope so it
    precedes module-scoped runs (use ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: Run config of the Ray study tests (``{data}``: dataset folder): the tiny benchmark, tiny-clip,
#: 2 epochs of batch 16, so that a trial is mostly Ray start-up.
TINY_STUDY_BASE = """
seed = 0
[data]
path = "{data}"
history_length = 3
[data.synthetic]
users = 60
items = 32
shapes = 4
brands = 4
colours = 2
min_length = 5
max_length = 8
image_size = 16
[embedder]
name = "tiny-clip"
finetune = "full"
[train]
epochs = 2
batch_size = 16
"""


@pytest.fixture(scope="session")
def tiny_study_base() -> str:
    """The TOML template (``{data}`` = dataset folder) every Ray study test starts from."""
    return TINY_STUDY_BASE
