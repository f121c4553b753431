from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from decoding_helpers import TinyModel

from sotflow.runtimes.torch.forward import DecoderModel
from sotflow.runtimes.torch.testing import tiny_llama


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


def _tiny(seed: int, runtime: str, folder: Path) -> TinyModel:
    return TinyModel.make(tiny_llama(seed=seed), runtime, folder / f"tiny-{seed}.gguf")


@pytest.fixture(scope="session", params=["torch", "llama.cpp"])
def tiny(request: pytest.FixtureRequest, gguf_dir: Path) -> TinyModel:
    """A tiny random Llama on each runtime (the decoders must not care which)."""
    return _tiny(1, request.param, gguf_dir)


@pytest.fixture(scope="session", params=["torch", "llama.cpp"])
def tiny_varied(request: pytest.FixtureRequest, gguf_dir: Path) -> TinyModel:
    """A seed whose greedy outputs do not fall into a loop quickly."""
    return _tiny(2, request.param, gguf_dir)


@pytest.fixture(scope="session")
def tiny_torch() -> DecoderModel:
    """The torch forward itself, for the tests of its internals."""
    return DecoderModel(tiny_llama(seed=1))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a busy machine waking it
    costs a scheduler tick per matmul: one thread makes these tests fast and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
