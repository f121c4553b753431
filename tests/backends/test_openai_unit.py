"""The OpenAI-compatible backend without a network: request bodies, parsing, streams and
error mapping, against respx-mocked httpx (and the official SDK on the same mock)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
import respx

from sotflow import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Completion,
    ConfigurationError,
    Delta,
    Direct,
    Engine,
    MalformedResponseError,
    OpenAIBackend,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    Request,
    ServerError,
    StreamInterruptedError,
)
from sotflow.backends.base import StreamItem

from ..conftest import SECRET

pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)

BASE = "http://mock.test/v1"
URL = f"{BASE}/chat/completions"


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield router


def backend(**kwargs: Any) -> OpenAIBackend:
    kwargs.setdefault("model", "m")
    kwargs.setdefault("base_url", BASE)
    kwargs.setdefault("api_key", SECRET)
    kwargs.setdefault("transport", "httpx")
    return OpenAIBackend(**kwargs)


def completion_body(*texts: str, usage: bool = True, logprobs: bool = False) -> dict[str, Any]:
    choices = []
    for index, text in reversed(list(enumerate(texts))):  # out of order on purpose
        choice: dict[str, Any] = {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        if logprobs:
            choice["logprobs"] = {
                "content": [
                    {"token": w, "logprob": -0.5, "top_logprobs": [{"token": w, "logprob": -0.5}]}
                    for w in text.split()
                ]
            }
        choices.append(choice)
    body: dict[str, Any] = {"id": "x", "model": "served-model", "choices": choices}
    if usage:
        body["usage"] = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    return body


def sse(*events: Any, done: bool = True) -> bytes:
    out = b"".join(
        b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n"
        for e in events
    )
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(text: str | None, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {
        "id": "c",
        "model": "served-model",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(prompt: int = 5, completion: int = 4) -> dict[str, Any]:
    return {
        "id": "c",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def streamed(body: bytes, pieces: int = 7) -> Callable[[httpx.Request], httpx.Response]:
    """A respx side effect that sends ``body`` in ``pieces`` arbitrary chunks."""

    def respond(request: httpx.Request) -> httpx.Response:
        async def gen() -> AsyncIterator[bytes]:
            step = max(1, len(body) // pieces)
            for start in range(0, len(body), step):
                yield body[start : start + step]

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=gen())

    return respond


async def collect(b: OpenAIBackend, request: Request) -> tuple[list[Delta], Completion]:
    items: list[StreamItem] = [item async for item in b.stream(request)]
    *deltas, final = items
    assert isinstance(final, Completion)
    assert all(isinstance(d, Delta) for d in deltas)
    return deltas, final  # type: ignore[return-value]


def joined(deltas: list[Delta], index: int = 0) -> str:
    return "".join(d.text for d in deltas if d.index == index)


# -- configuration ----------------------------------------------------------------------------


def test_no_api_key_for_openai_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIBackend()
    # A local server needs no key.
    assert OpenAIBackend(base_url="http://127.0.0.1:9/v1").base_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert SECRET not in repr(OpenAIBackend())


@pytest.mark.parametrize("url", ["localhost:8000/v1", "127.0.0.1:8000", "ftp://host/v1", "http://"])
def test_a_base_url_without_http_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"base_url .* is not an http\(s\) URL"):
        OpenAIBackend(base_url=url, api_key=SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(ConfigurationError, match=r"OPENAI_BASE_URL .* e\.g\. http://localhost"):
        OpenAIBackend(api_key=SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", " HTTPS://host:8000/v1/ ")
    assert OpenAIBackend(api_key=SECRET).base_url == "HTTPS://host:8000/v1"


def test_conflicting_or_unknown_transports_are_refused() -> None:
    sdk = openai.AsyncOpenAI(base_url=BASE, api_key=SECRET)
    with pytest.raises(ConfigurationError, match="not both"):
        OpenAIBackend(client=sdk, transport="httpx")
    with pytest.raises(ConfigurationError, match="'aiohttp' or 'httpx'"):
        OpenAIBackend(base_url=BASE, transport="curl")  # type: ignore[arg-type]


# -- request bodies -------------------------------------------------------------------------


def test_body_maps_sampling_params() -> None:
    request = Request.of(
        "q",
        system="sys",
        max_tokens=20,
        temperature=0.5,
        top_p=0.9,
        n=3,
        stop=("\n\n", "END"),
        seed=11,
        logprobs=True,
        top_logprobs=2,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
    )
    body = backend(extra_body={"user": "tester"}).body(request, stream=False)
    assert body == {
        "model": "m",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}],
        "max_tokens": 20,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 3,
        "stop": ["\n\n", "END"],
        "seed": 11,
        "logprobs": True,
        "top_logprobs": 2,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "user": "tester",
    }
    plain = backend().body(Request.of("q"), stream=True)
    assert plain == {
        "model": "m",
        "messages": [{"role": "user", "content": "q"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_prefill_uses_continue_final_message_when_the_server_can() -> None:
    body = backend(prefill=True).body(Request.of("list tips", prefill="1."), stream=False)
    assert body["messages"][-1] == {"role": "assistant", "content": "1."}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_prefill_falls_back_to_an_instruction() -> None:
    body = backend().body(Request.of("list tips", prefill="1."), stream=False)
    assert body["messages"] == [
        {"role": "user", "content": "list tips\n\nBegin your reply with exactly: 1."}
    ]
    assert "continue_final_message" not in body


# -- plain completions ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_complete_sends_the_body_and_parses_choices(mock: respx.MockRouter) -> None:
    route = mock.post(URL).respond(200, json=completion_body("red", "green", logprobs=True))
    b = backend()
    completion = await b.complete(Request.of("colour?", n=2, logprobs=True))
    await b.aclose()
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content)["n"] == 2
    assert [c.text for c in completion.choices] == ["red", "green"]
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.model == "served-model" and completion.finish_reason == "stop"
    assert completion.usage.total_tokens == 10 and not completion.usage.estimated
    logprobs = completion.choices[1].logprobs
    assert logprobs is not None and logprobs[0].token == "green"
    assert logprobs[0].logprob == -0.5 and logprobs[0].top == (("green", -0.5),)


@pytest.mark.anyio
async def test_missing_usage_is_estimated(mock: respx.MockRouter) -> None:
    mock.post(URL).respond(200, json=completion_body("a reply of some length", usage=False))
    b = backend()
    completion = await b.complete(Request.of("a question of some length"))
    await b.aclose()
    usage = completion.usage
    assert usage.estimated and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "text"),
    [
        ("1. Sleep in the dark.", " Sleep in the dark."),
        ("  1. Leading spaces", " Leading spaces"),
        ("Something else", "Something else"),  # the model ignored the instruction
    ],
)
async def test_echoed_prefill_is_stripped(mock: respx.MockRouter, reply: str, text: str) -> None:
    mock.post(URL).respond(200, json=completion_body(reply))
    b = backend()
    completion = await b.complete(Request.of("tips", prefill="1."))
    await b.aclose()
    assert completion.text == text


@pytest.mark.anyio
async def test_real_prefill_is_not_stripped(mock: respx.MockRouter) -> None:
    mock.post(URL).respond(200, json=completion_body("1. again"))
    b = backend(prefill=True)
    completion = await b.complete(Request.of("tips", prefill="1."))
    await b.aclose()
    assert completion.text == "1. again"  # the server continued after "1."; keep all of it


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"<html>oops</html>", "invalid JSON"),
        (b'{"id": "x", "choices": [', "invalid JSON"),
        (b"[1, 2]", "other than an object"),
        (b'{"id": "x", "choices": []}', "without choices"),
        (b'{"id": "x", "choices": ["nonsense"]}', "malformed choice"),
    ],
)
async def test_malformed_bodies(mock: respx.MockRouter, content: bytes, match: str) -> None:
    mock.post(URL).respond(200, content=content)
    b = backend()
    with pytest.raises(MalformedResponseError, match=match) as caught:
        await b.complete(Request.of("q"))
    await b.aclose()
    assert caught.value.retryable


@pytest.mark.anyio
async def test_an_error_object_in_a_200_body_is_a_server_error(mock: respx.MockRouter) -> None:
    mock.post(URL).respond(200, json={"error": {"message": "overloaded", "code": "busy"}})
    b = backend()
    with pytest.raises(ServerError, match="overloaded"):
        await b.complete(Request.of("q"))
    await b.aclose()


# -- error statuses ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "code", "cls", "hint"),
    [
        (400, "invalid_request_error", BadRequestError, ""),
        (401, "invalid_api_key", AuthenticationError, "OPENAI_API_KEY"),
        (403, None, AuthenticationError, "permission"),
        (404, "model_not_found", BadRequestError, "model name ('m')"),
        (422, None, BadRequestError, ""),
        (429, "insufficient_quota", QuotaExceededError, "add credit"),
        (429, "rate_limit_exceeded", RateLimitError, ""),
        (500, None, ServerError, ""),
        (503, None, ServerError, ""),
    ],
)
async def test_status_mapping_with_an_echoed_key(
    mock: respx.MockRouter, status: int, code: str | None, cls: type, hint: str
) -> None:
    # A careless server echoes the key it was sent; our message must not repeat it.
    message = f"Incorrect API key provided: {SECRET}. Bearer {SECRET}"
    mock.post(URL).respond(status, json={"error": {"message": message, "code": code}})
    b = backend()
    with pytest.raises(ProviderError) as caught:
        await b.complete(Request.of("q"))
    await b.aclose()
    exc = caught.value
    assert type(exc) is cls
    assert exc.status_code == status and exc.code == code
    text = str(exc)
    assert f"HTTP {status} from mock.test/v1" in text and hint in text
    assert "Incorrect API key provided: ***" in text
    assert SECRET not in text and SECRET not in repr(exc)


@pytest.mark.anyio
async def test_a_non_json_error_body_never_leaks_part_of_the_key(mock: respx.MockRouter) -> None:
    # The plain-text body is cut for the message; cutting must not leave a key prefix.
    for pad in range(270, 300, 3):
        body = ("x" * pad + " key=" + SECRET).encode()
        mock.post(URL).respond(401, content=body)
        b = backend()
        with pytest.raises(AuthenticationError) as caught:
            await b.complete(Request.of("q"))
        await b.aclose()
        assert SECRET[:12] not in str(caught.value), pad


@pytest.mark.anyio
async def test_retry_headers_are_read(mock: respx.MockRouter) -> None:
    mock.post(URL).respond(
        429,
        json={"error": {"message": "slow", "code": None}},
        headers={"retry-after-ms": "1200", "x-should-retry": "false"},
    )
    b = backend()
    with pytest.raises(RateLimitError) as caught:
        await b.complete(Request.of("q"))
    await b.aclose()
    assert caught.value.retry_after == 1.2
    assert caught.value.retryable is False


@pytest.mark.anyio
async def test_transport_failures_map_to_connection_and_timeout_errors(
    mock: respx.MockRouter,
) -> None:
    mock.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    b = backend()
    with pytest.raises(APIConnectionError, match=r"mock\.test"):
        await b.complete(Request.of("q"))
    mock.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(APITimeoutError):
        await b.complete(Request.of("q"))
    with pytest.raises(APITimeoutError):
        await collect(b, Request.of("q"))
    await b.aclose()


# -- streams ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("pieces", [1, 3, 17, 10_000])
async def test_stream_reassembles_with_usage_from_the_final_chunk(
    mock: respx.MockRouter, pieces: int
) -> None:
    body = sse(
        chunk("Hello"), chunk(","), chunk(" wörld"), chunk(None, finish="stop"), usage_chunk(5, 3)
    )
    route = mock.post(URL).mock(side_effect=streamed(body, pieces))
    b = backend()
    deltas, completion = await collect(b, Request.of("q"))
    await b.aclose()
    assert joined(deltas) == completion.text == "Hello, wörld"
    assert completion.finish_reason == "stop" and completion.model == "served-model"
    assert completion.usage.total_tokens == 8 and not completion.usage.estimated
    sent = json.loads(route.calls.last.request.content)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
async def test_stream_without_usage_is_estimated(mock: respx.MockRouter) -> None:
    mock.post(URL).mock(side_effect=streamed(sse(chunk("hi there"), chunk(None, finish="stop"))))
    b = backend()
    _, completion = await collect(b, Request.of("q"))
    await b.aclose()
    assert completion.usage.estimated and completion.usage.completion_tokens >= 1


@pytest.mark.anyio
async def test_stream_of_several_samples_with_logprobs(mock: respx.MockRouter) -> None:
    def lp(index: int, text: str) -> dict[str, Any]:
        event = chunk(text, index)
        event["choices"][0]["logprobs"] = {"content": [{"token": text, "logprob": -1.0}]}
        return event

    body = sse(
        lp(0, "a"),
        lp(1, "x"),
        lp(0, "b"),
        lp(1, "y"),
        chunk(None, 0, "stop"),
        chunk(None, 1, "length"),
    )
    mock.post(URL).mock(side_effect=streamed(body, 5))
    b = backend()
    deltas, completion = await collect(b, Request.of("q", n=2, logprobs=True))
    await b.aclose()
    assert [c.text for c in completion.choices] == ["ab", "xy"]
    assert joined(deltas, 0) == "ab" and joined(deltas, 1) == "xy"
    assert [c.finish_reason for c in completion.choices] == ["stop", "length"]
    assert completion.choices[1].logprobs is not None
    assert [t.token for t in completion.choices[1].logprobs] == ["x", "y"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("pieces", "text"),
    [
        (["1", ".", " Sleep", " well"], " Sleep well"),
        ([" ", "1.", " Dark room"], " Dark room"),
        (["1. A", " B"], " A B"),
        (["Sure", ": 1. x"], "Sure: 1. x"),  # does not start with the prefill: kept whole
        (["1"], "1"),  # the whole reply is a prefix of the prefill: it is the reply
    ],
)
async def test_echoed_prefill_is_stripped_from_streams(
    mock: respx.MockRouter, pieces: list[str], text: str
) -> None:
    body = sse(*(chunk(p) for p in pieces), chunk(None, finish="stop"))
    mock.post(URL).mock(side_effect=streamed(body, 50))
    b = backend()
    deltas, completion = await collect(b, Request.of("tips", prefill="1."))
    await b.aclose()
    assert completion.text == text
    assert joined(deltas) == completion.text


@pytest.mark.anyio
async def test_stream_and_plain_agree_on_prefill_stripping(mock: respx.MockRouter) -> None:
    reply = "  1. Keep a schedule."
    mock.post(URL).respond(200, json=completion_body(reply))
    b = backend()
    plain = await b.complete(Request.of("tips", prefill="1."))
    body = sse(*(chunk(c) for c in reply), chunk(None, finish="stop"))  # one char a chunk
    mock.post(URL).mock(side_effect=streamed(body, 3))
    deltas, streamed_completion = await collect(b, Request.of("tips", prefill="1."))
    await b.aclose()
    assert streamed_completion.text == plain.text == joined(deltas)


@pytest.mark.anyio
async def test_mid_stream_error_event(mock: respx.MockRouter) -> None:
    error = {"error": {"message": f"model crashed (key {SECRET})", "code": "internal"}}
    mock.post(URL).mock(side_effect=streamed(sse(chunk("par"), error), 2))
    b = backend()
    with pytest.raises(ServerError, match="mid-stream: model crashed") as caught:
        await collect(b, Request.of("q"))
    await b.aclose()
    assert SECRET not in str(caught.value) and caught.value.code == "internal"
    assert caught.value.retryable


@pytest.mark.anyio
async def test_malformed_stream_event(mock: respx.MockRouter) -> None:
    bad = ("{not json " + SECRET).encode()
    mock.post(URL).mock(side_effect=streamed(sse(chunk("a"), bad), 2))
    b = backend()
    with pytest.raises(MalformedResponseError, match="not JSON") as caught:
        await collect(b, Request.of("q"))
    await b.aclose()
    assert SECRET not in str(caught.value)
    for pad in range(170, 200, 3):  # the event is cut for the message: never mid-key
        bad = ("{not json " + "x" * pad + SECRET).encode()
        mock.post(URL).mock(side_effect=streamed(sse(bad), 1))
        with pytest.raises(MalformedResponseError) as caught:
            await collect(b, Request.of("q"))
        assert SECRET[:12] not in str(caught.value), pad
    mock.post(URL).mock(side_effect=streamed(sse(chunk("a"), [1, 2]), 2))
    with pytest.raises(MalformedResponseError, match="not an object"):
        await collect(b, Request.of("q"))
    mock.post(URL).mock(side_effect=streamed(sse({"choices": ["junk"]}), 2))
    with pytest.raises(MalformedResponseError, match="malformed stream chunk"):
        await collect(b, Request.of("q"))
    await b.aclose()


@pytest.mark.anyio
async def test_truncated_streams_are_interrupted(mock: respx.MockRouter) -> None:
    b = backend()
    # No [DONE]: the body just ends.
    mock.post(URL).mock(side_effect=streamed(sse(chunk("a"), chunk("b"), done=False)))
    with pytest.raises(StreamInterruptedError, match=r"without \[DONE\]"):
        await collect(b, Request.of("q"))
    # [DONE] but no choice ever finished.
    mock.post(URL).mock(side_effect=streamed(sse(chunk("a"))))
    with pytest.raises(StreamInterruptedError, match="before any choice finished"):
        await collect(b, Request.of("q"))
    await b.aclose()


@pytest.mark.anyio
async def test_a_connection_broken_mid_body_is_a_stream_interruption(
    mock: respx.MockRouter,
) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        async def gen() -> AsyncIterator[bytes]:
            yield sse(chunk("partial"), done=False)
            raise httpx.ReadError("connection reset by peer")

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=gen())

    mock.post(URL).mock(side_effect=respond)
    b = backend()
    seen: list[StreamItem] = []
    with pytest.raises(StreamInterruptedError, match="broke off"):
        async for item in b.stream(Request.of("q")):
            seen.append(item)
    await b.aclose()
    assert seen == [Delta("partial")]


@pytest.mark.anyio
async def test_error_status_on_a_stream(mock: respx.MockRouter) -> None:
    mock.post(URL).respond(
        503, json={"error": {"message": "try later"}}, headers={"retry-after": "2"}
    )
    b = backend()
    with pytest.raises(ServerError, match="try later") as caught:
        await collect(b, Request.of("q"))
    await b.aclose()
    assert caught.value.retry_after == 2.0


# -- the engine on top of the mock ----------------------------------------------------------


@pytest.mark.anyio
async def test_engine_retries_a_429_then_succeeds(mock: respx.MockRouter) -> None:
    route = mock.post(URL).mock(
        side_effect=[
            httpx.Response(
                429, json={"error": {"message": "slow"}}, headers={"retry-after-ms": "50"}
            ),
            httpx.Response(200, json=completion_body("finally")),
        ]
    )
    async with Engine(backend()) as engine:
        answer = await engine.run(Direct(), "q")
    assert answer.text == "finally" and answer.attempts == 2
    assert route.call_count == 2


@pytest.mark.anyio
async def test_http_client_is_used_and_not_closed(mock: respx.MockRouter) -> None:
    mock.post(URL).respond(200, json=completion_body("ok"))
    client = httpx.AsyncClient()
    b = OpenAIBackend(model="m", base_url=BASE, api_key=SECRET, http_client=client)
    assert (await b.complete(Request.of("q"))).text == "ok"
    await b.aclose()
    assert not client.is_closed  # the caller's client stays the caller's to close
    await client.aclose()


# -- a ready openai.AsyncOpenAI client ---------------------------------------------------------
# The SDK speaks httpx2 (not the httpx that respx patches), so it gets httpx2's own
# MockTransport: same idea, no network.

Responder = Callable[[httpx2.Request], httpx2.Response]


class SDKMock:
    """Answers the SDK's requests in order (the last responder repeats)."""

    def __init__(self) -> None:
        self.responders: list[Responder] = []
        self.requests: list[httpx2.Request] = []

    def then(self, responder: Responder) -> SDKMock:
        self.responders.append(responder)
        return self

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        await request.aread()
        responder = self.responders.pop(0) if len(self.responders) > 1 else self.responders[0]
        return responder(request)

    def body(self) -> Any:
        return json.loads(self.requests[-1].content)


def sdk_json(status: int, payload: Any) -> Responder:
    return lambda request: httpx2.Response(status, json=payload)


def sdk_stream(body: bytes, *, fail: bool = False) -> Responder:
    def respond(request: httpx2.Request) -> httpx2.Response:
        async def gen() -> AsyncIterator[bytes]:
            half = len(body) // 2
            yield body[:half]
            if fail:
                raise httpx2.ReadError("connection reset by peer")
            yield body[half:]

        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=gen())

    return respond


def sdk_backend(sdk: SDKMock, **kwargs: Any) -> OpenAIBackend:
    client = openai.AsyncOpenAI(
        base_url=BASE,
        api_key=SECRET,
        max_retries=5,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(sdk.handle)),
    )
    return OpenAIBackend(model="m", client=client, **kwargs)


@pytest.mark.anyio
async def test_sdk_client_complete_and_stream() -> None:
    sdk = SDKMock().then(sdk_json(200, completion_body("via sdk")))
    b = sdk_backend(sdk)
    assert b.base_url == BASE
    completion = await b.complete(Request.of("q", max_tokens=5))
    assert completion.text == "via sdk" and completion.usage.total_tokens == 10
    assert sdk.body()["max_tokens"] == 5
    assert sdk.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    body = sse(chunk("a"), chunk(" b"), chunk(None, finish="stop"), usage_chunk())
    sdk.responders = [sdk_stream(body)]
    deltas, streamed_completion = await collect(b, Request.of("q"))
    assert joined(deltas) == streamed_completion.text == "a b"
    assert streamed_completion.usage.total_tokens == 9
    assert sdk.body()["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
async def test_sdk_client_sends_prefill_fields_as_extra_body() -> None:
    sdk = SDKMock().then(sdk_json(200, completion_body("x")))
    await sdk_backend(sdk, prefill=True).complete(Request.of("q", prefill="1."))
    sent = sdk.body()
    assert sent["continue_final_message"] is True
    assert sent["messages"][-1] == {"role": "assistant", "content": "1."}


@pytest.mark.anyio
async def test_sdk_client_retries_are_off_and_errors_are_ours() -> None:
    message = f"Incorrect API key provided: {SECRET}"
    sdk = SDKMock().then(sdk_json(500, {"error": {"message": message}}))
    b = sdk_backend(sdk)
    with pytest.raises(ServerError) as caught:
        await b.complete(Request.of("q"))
    assert len(sdk.requests) == 1  # the SDK's own max_retries=5 was turned off
    assert SECRET not in str(caught.value)
    sdk.responders = [
        lambda r: httpx2.Response(
            429,
            json={"error": {"message": message, "code": "rate_limit_exceeded"}},
            headers={"retry-after-ms": "700"},
        )
    ]
    with pytest.raises(RateLimitError) as limited:
        await collect(b, Request.of("q"))
    assert limited.value.retry_after == 0.7 and SECRET not in str(limited.value)
    sdk.responders = [sdk_json(401, {"error": {"message": message, "code": "invalid_api_key"}})]
    with pytest.raises(AuthenticationError):
        await b.complete(Request.of("q"))


@pytest.mark.anyio
async def test_sdk_client_stream_failures_are_ours() -> None:
    sdk = SDKMock()
    b = sdk_backend(sdk)
    error = {"error": {"message": f"crashed {SECRET}", "code": "internal"}}
    sdk.responders = [sdk_stream(sse(chunk("a"), error))]
    with pytest.raises(ServerError) as caught:
        await collect(b, Request.of("q"))
    assert SECRET not in str(caught.value) and "crashed" in str(caught.value)

    sdk.responders = [sdk_stream(sse(chunk("a"), b"{not json"))]
    with pytest.raises(MalformedResponseError):
        await collect(b, Request.of("q"))

    sdk.responders = [sdk_stream(sse(chunk("partial"), done=False), fail=True)]
    with pytest.raises(APIConnectionError):
        await collect(b, Request.of("q"))

    sdk.responders = [
        lambda r: httpx2.Response(
            200, content=b"<html>oops</html>", headers={"content-type": "application/json"}
        )
    ]
    with pytest.raises(MalformedResponseError):
        await b.complete(Request.of("q"))

    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused")

    sdk.responders = [refuse]
    with pytest.raises(APIConnectionError):
        await b.complete(Request.of("q"))


@pytest.mark.anyio
async def test_an_owned_httpx_client_reopens_for_the_next_engine(mock: respx.MockRouter) -> None:
    mock.post(URL).respond(200, json=completion_body("again"))
    b = backend()
    for _ in range(2):  # each engine closes the backend on exit
        async with Engine(b) as engine:
            assert (await engine.run(Direct(), "q")).text == "again"
