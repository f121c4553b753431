"""Bad input to the llama.cpp runtime: each a clear error that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from sotflow.backends.local import LocalBackend
from sotflow.errors import BadRequestError, ConfigurationError
from sotflow.runtimes import choose_runtime, open_model, sources
from sotflow.runtimes.llama_cpp.testing import write_gguf
from sotflow.runtimes.torch.testing import tiny_llama
from sotflow.types import Request


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_llama(seed=3, eos_token_id=256), tmp_path_factory.mktemp("g") / "t.gguf")


def test_a_file_that_is_not_a_gguf_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    with pytest.raises(ConfigurationError, match=r"llama\.cpp cannot load .*junk\.gguf"):
        LocalBackend(str(junk))


def test_an_architecture_llama_cpp_lacks(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "no-such-architecture")
    writer.add_tensor("x", __import__("numpy").zeros(4, dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hint = r"architecture llama\.cpp supports|runtime='torch'"
    with pytest.raises(ConfigurationError, match=hint):
        LocalBackend(str(path))


def test_missing_llama_cpp_python_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_llama(name: str, *args: object, **kwargs: object) -> object:
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    from sotflow.runtimes.llama_cpp import runtime

    monkeypatch.setattr(runtime, "_shared", {})
    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(ConfigurationError, match=r"pip install llama-cpp-python.*runtime='torch'"):
        runtime.llama_cpp_module()


def test_runtime_choice(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf_source = sources.resolve_model(str(tiny_gguf))
    assert choose_runtime(gguf_source, "auto", "cpu") == "llama.cpp"
    assert choose_runtime(gguf_source, "auto", "cuda") == "torch"
    with pytest.raises(ConfigurationError, match="unknown runtime"):
        choose_runtime(gguf_source, "vllm", "cpu")
    with pytest.raises(ConfigurationError, match="runs on the CPU"):
        choose_runtime(gguf_source, "llama.cpp", "cuda")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ConfigurationError, match=r"runs \.gguf files"):
        choose_runtime(sources.resolve_model(str(folder)), "llama.cpp", "cpu")
    # Without llama-cpp-python, a GGUF falls back to torch (with a warning), never fails.
    real = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a)
    )
    assert choose_runtime(gguf_source, "auto", "cpu") == "torch"


@pytest.mark.anyio
async def test_a_prompt_over_the_context_is_a_bad_request(tiny_gguf: Path) -> None:
    backend = LocalBackend.from_runtime(open_model(str(tiny_gguf), context=256))
    assert backend.runtime.info.context_length == 256
    with pytest.raises(BadRequestError, match="context") as caught:
        await backend.complete(Request.of("x" * 400, max_tokens=3))
    assert caught.value.code == "context_length_exceeded"
    # The backend is still fine for a request that fits.
    assert (await backend.complete(Request.of("hi", max_tokens=3))).choices[0].finish_reason


def test_no_float32_copy_of_the_model(tiny_gguf: Path) -> None:
    loaded = open_model(str(tiny_gguf))
    assert loaded.runtime.info.name == "llama.cpp" and loaded.hf_model is None
