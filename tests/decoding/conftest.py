from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from sotflow.decoding.forward import DecoderModel
from sotflow.decoding.testing import tiny_llama


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny() -> DecoderModel:
    return DecoderModel(tiny_llama(seed=1))


@pytest.fixture(scope="session")
def tiny_varied() -> DecoderModel:
    """A seed whose greedy outputs do not fall into a loop quickly."""
    return DecoderModel(tiny_llama(seed=2))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a busy machine waking it
    costs a scheduler tick per matmul: one thread makes these tests fast and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
