"""The OpenAI-compatible server, driven by the official client over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import openai
import pytest
import torch

from sotflow.backends.base import BaseBackend, Capabilities
from sotflow.backends.local import LocalBackend
from sotflow.errors import BadRequestError
from sotflow.runtimes.torch.testing import byte_tokenizer, tiny_llama
from sotflow.serve import parse_request, serving
from sotflow.types import Completion, Request


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    tokenizer = byte_tokenizer()
    model = tiny_llama(seed=2, eos_token_id=tokenizer.eos_token_id)
    return LocalBackend.from_model(model, tokenizer, name="tiny")


@pytest.fixture
async def url(backend: LocalBackend) -> AsyncIterator[str]:
    async with serving(backend, "127.0.0.1", 0) as base_url:
        yield base_url


@pytest.fixture
async def oa(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client(url) as c:
        yield c


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)


MESSAGES = [{"role": "user", "content": "What is a cat?"}]


@pytest.mark.anyio
async def test_plain_completion_matches_the_backend(
    oa: openai.AsyncOpenAI, backend: LocalBackend
) -> None:
    response = await oa.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=20,
        temperature=0,  # type: ignore[arg-type]
    )
    direct = await backend.complete(Request.of("What is a cat?", max_tokens=20, temperature=0))
    assert response.choices[0].message.content == direct.text
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason == direct.finish_reason
    assert response.usage is not None
    assert response.usage.prompt_tokens == direct.usage.prompt_tokens
    assert response.usage.completion_tokens == direct.usage.completion_tokens
    assert response.model == "tiny"


@pytest.mark.anyio
async def test_stream_with_usage(oa: openai.AsyncOpenAI, backend: LocalBackend) -> None:
    stream = await oa.chat.completions.create(
        model="tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    direct = await backend.complete(Request.of("What is a cat?", max_tokens=20))
    assert text == direct.text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [direct.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == direct.usage.completion_tokens
    plain = await oa.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=5,
        stream=True,  # type: ignore[arg-type]
    )
    assert all(c.usage is None for c in [c async for c in plain])


@pytest.mark.anyio
async def test_prefill_sampling_extras_and_n(oa: openai.AsyncOpenAI, backend: LocalBackend) -> None:
    c = oa
    response = await c.chat.completions.create(
        model="tiny",
        messages=[*MESSAGES, {"role": "assistant", "content": "1."}],  # type: ignore[list-item]
        max_tokens=12,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    direct = await backend.complete(Request.of("What is a cat?", prefill="1.", max_tokens=12))
    assert response.choices[0].message.content == direct.text
    sampled = await c.chat.completions.create(
        model="tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=10,
        n=2,
        seed=3,
        temperature=1.0,
        top_p=0.9,
        stop=["\n\n"],
        logprobs=True,
        top_logprobs=2,
        extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1},
    )
    assert [ch.index for ch in sampled.choices] == [0, 1]
    again = await c.chat.completions.create(
        model="tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=10,
        n=2,
        seed=3,
        temperature=1.0,
        top_p=0.9,
        stop=["\n\n"],
        logprobs=True,
        top_logprobs=2,
        extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1},
    )
    assert [ch.message.content for ch in sampled.choices] == [
        ch.message.content for ch in again.choices
    ]
    lp = sampled.choices[0].logprobs
    assert lp is not None and lp.content and len(lp.content[0].top_logprobs) == 2


@pytest.mark.anyio
async def test_models_endpoint(oa: openai.AsyncOpenAI) -> None:
    models = await oa.models.list()
    assert [m.id for m in models.data] == ["tiny"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": MESSAGES, "temperature": 5}, "temperature"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "stop": 3}, "stop"),
        ({"messages": MESSAGES, "top_logprobs": 2}, "logprobs"),
        ({"messages": MESSAGES, "continue_final_message": True}, "assistant"),
        ({"messages": [{"role": "user", "content": "x" * 700}]}, "context"),
    ],
)
async def test_bad_requests_get_400_with_a_clear_message(
    url: str,
    oa: openai.AsyncOpenAI,
    body: dict,  # type: ignore[type-arg]
    message: str,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/chat/completions", json=body) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    known = {k: v for k, v in body.items() if k != "continue_final_message"}
    extra = {k: v for k, v in body.items() if k == "continue_final_message"}
    with pytest.raises(openai.BadRequestError, match=message):
        await oa.chat.completions.create(model="tiny", extra_body=extra, **known)


@pytest.mark.anyio
async def test_invalid_json_is_400(url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/chat/completions", data=b"{nope") as response,
    ):
        assert response.status == 400
        assert "JSON" in (await response.json())["error"]["message"]


class Failing(BaseBackend):
    name = "failing"
    model = "failing"
    capabilities = Capabilities()

    async def complete(self, request: Request) -> Completion:
        raise RuntimeError("boom")

    async def stream(self, request: Request) -> AsyncIterator[Completion]:  # type: ignore[override]
        raise RuntimeError("boom")
        yield  # pragma: no cover


@pytest.mark.anyio
async def test_internal_errors_are_500() -> None:
    async with serving(Failing(), "127.0.0.1", 0) as base:
        async with client(base) as c:
            with pytest.raises(openai.InternalServerError) as info:
                await c.chat.completions.create(model="x", messages=MESSAGES)  # type: ignore[arg-type]
        assert "boom" in str(info.value)
        async with aiohttp.ClientSession() as session:
            body = {"messages": MESSAGES, "stream": True}
            async with session.post(f"{base}/chat/completions", json=body) as response:
                assert response.status == 500
                assert json.loads(await response.text())["error"]["type"] == "server_error"


def test_parse_request_maps_prefill_and_limits() -> None:
    request, stream, usage = parse_request(
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "S"}]},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "1."},
            ],
            "continue_final_message": True,
            "add_generation_prompt": False,
            "max_tokens": 5,
            "max_completion_tokens": 9,
            "top_k": -1,
        }
    )
    assert request.prefill == "1." and [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[0].content == "S"
    assert request.params.max_tokens == 9 and request.params.top_k is None
    assert not stream and not usage


def test_bad_request_error_is_a_backend_error() -> None:
    assert issubclass(BadRequestError, Exception)


@pytest.mark.anyio
async def test_sotflow_openai_backend_with_prefill(url: str, backend: LocalBackend) -> None:
    from sotflow import OpenAIBackend

    remote = OpenAIBackend(model="tiny", base_url=url, api_key="unused", prefill=True)
    try:
        request = Request.of("What is a cat?", system="Be brief.", prefill="1.", max_tokens=12)
        direct = await backend.complete(request)
        got = await remote.complete(request)
        assert got.text == direct.text
        assert got.usage.completion_tokens == direct.usage.completion_tokens
        items = [item async for item in remote.stream(request)]
        assert isinstance(items[-1], Completion) and items[-1].text == direct.text
        sampled = Request.of("Hi", max_tokens=8, n=2, temperature=1.0, seed=5, logprobs=True)
        pair = await remote.complete(sampled)
        assert [c.text for c in pair.choices] == [
            c.text for c in (await backend.complete(sampled)).choices
        ]
        assert pair.choices[0].logprobs
    finally:
        await remote.aclose()
