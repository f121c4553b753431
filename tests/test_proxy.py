"""``sotflow serve --upstream``: the strategy proxy, as a real process in front of the loopback
server, driven by the official ``openai`` SDK and plain HTTP over 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from sotflow.strategies.registry import STRATEGY_NAMES
from sotflow.testing import Fault, LoopbackServer
from sotflow.testing.proxy import ProxyProcess as Proxy

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
CLIENT_KEY = "sk-client-key-abcdef"
SOT = "sotflow.testing.responders:sot_responder"
QUESTION = [{"role": "user", "content": "How can I improve my time management?"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[LoopbackServer]:
    with LoopbackServer(api_key=UPSTREAM_KEY, responder=SOT) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: LoopbackServer) -> Iterator[Proxy]:
    served = Proxy("--upstream", upstream.base_url, env={"OPENAI_API_KEY": UPSTREAM_KEY})
    yield served
    log = served.stop()
    # Whatever went wrong in the tests, the proxy never wrote the upstream's key.
    assert UPSTREAM_KEY not in log


@pytest.fixture
def oa(proxy: Proxy) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy.url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
def http(proxy: Proxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, timeout=60) as client:
        yield client


def direct_upstream(upstream: LoopbackServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream.base_url, api_key=UPSTREAM_KEY, max_retries=0)


def test_models_lists_every_strategy_over_every_upstream_model(oa: openai.OpenAI) -> None:
    ids = [m.id for m in oa.models.list().data]
    assert ids[0] == "loopback"
    assert {f"{s}/loopback" for s in STRATEGY_NAMES} <= set(ids)
    assert {"sot/loopback", "auto/loopback", "self-consistency/loopback"} <= set(ids)


def test_a_bare_model_is_passed_through_unchanged(
    oa: openai.OpenAI, upstream: LoopbackServer
) -> None:
    with direct_upstream(upstream) as straight:
        expected = straight.chat.completions.create(model="loopback", messages=QUESTION)
    raw = oa.chat.completions.with_raw_response.create(model="loopback", messages=QUESTION)
    got = raw.parse()
    assert got.choices[0].message.content == expected.choices[0].message.content
    assert got.usage == expected.usage
    assert raw.headers["x-sotflow-strategy"] == "direct"
    assert raw.headers["x-sotflow-run-id"] == got.id


def test_sot_streams_its_answer_in_reading_order_with_usage_of_every_call(
    oa: openai.OpenAI, upstream: LoopbackServer
) -> None:
    # Whole first: it also lets the proxy's backend measure the upstream (a few probe
    # calls, once), which the streamed answer's count of calls must not include.
    whole = oa.chat.completions.create(model="sot/loopback", messages=QUESTION)
    before = upstream.stats()["requests"]
    raw = oa.chat.completions.with_raw_response.create(
        model="sot/loopback",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-sotflow-strategy"] == "sot"
    chunks = list(raw.parse())
    calls = upstream.stats()["requests"] - before
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert calls >= 3  # a skeleton and its points
    assert len(pieces) > calls  # streamed, not one chunk per call
    assert text.startswith("1.") and "\n2." in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert chunks[-1].model_extra and chunks[-1].model_extra["sotflow"]["calls"] == calls
    # The sum over the calls: more than one point's expansion could have written.
    assert whole.choices[0].message.content == text
    assert whole.usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens > calls  # every call's prompt counted


def test_strategy_options_come_in_the_sotflow_object(oa: openai.OpenAI) -> None:
    # The loopback's skeletons have 5 to 8 points: two points is the option's doing.
    answer = oa.chat.completions.create(
        model="sot/loopback",
        messages=QUESTION,
        extra_body={"sotflow": {"max_points": 2, "min_points": 1}},
    )
    assert answer.model_extra and answer.model_extra["sotflow"]["calls"] == 3
    assert "\n3." not in (answer.choices[0].message.content or "")
    with pytest.raises(openai.BadRequestError, match="no option 'breadth'"):
        oa.chat.completions.create(
            model="sot/loopback", messages=QUESTION, extra_body={"sotflow": {"breadth": 2}}
        )


def test_tools_go_through_unchanged_whatever_strategy_was_named(oa: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    for model in ("loopback", "sot/loopback"):
        answer = oa.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[tool],  # type: ignore[list-item]
            tool_choice="required",
        )
        calls = answer.choices[0].message.tool_calls
        assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
        assert answer.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"presence_penalty": "x"}, "presence_penalty"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"seed": "7"}, "seed"),
        ({"logit_bias": {"5": 500}}, "5"),
        ({"stream": "yes"}, "stream"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ],
)
def test_every_sampling_field_is_checked(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = http.post(
        "/chat/completions", json={"model": "loopback", "messages": QUESTION, **body}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert param in error["message"]


def test_a_huge_seed_is_the_upstreams_to_take(oa: openai.OpenAI) -> None:
    answer = oa.chat.completions.create(
        model="loopback", messages=QUESTION, seed=1180591620717411303424
    )
    assert answer.choices[0].message.content


def test_every_error_has_openais_shape(http: httpx.Client) -> None:
    cases = [
        (http.get("/nowhere"), 404, "not_found"),
        (http.get("/chat/completions"), 405, "method_not_allowed"),
        (
            http.post("/chat/completions", content=b"x" * (9 * 1024 * 1024)),
            413,
            "request_too_large",
        ),
        (http.post("/chat/completions", content=b"{nope"), 400, None),
    ]
    for response, status, code in cases:
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == code and error["message"]


def test_an_unknown_model_is_404_listing_the_served_ones(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oa.chat.completions.create(model="sot/gpt-nope", messages=QUESTION)
    body: Any = info.value.body
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert "loopback" in body["message"]


def test_the_upstream_key_never_shows_in_an_error(
    oa: openai.OpenAI, upstream: LoopbackServer
) -> None:
    upstream.inject(Fault("status", status=400, message="bad key {key}", match="ECHO"))
    with pytest.raises(openai.BadRequestError) as info:
        oa.chat.completions.create(model="loopback", messages=[{"role": "user", "content": "ECHO"}])
    assert "bad key" in str(info.value) and UPSTREAM_KEY not in str(info.value)
    upstream.inject(Fault("status", status=400, message="bad key {key}", match="ECHO2"))
    with pytest.raises(openai.APIError) as streamed:
        stream = oa.chat.completions.create(
            model="sot/loopback", messages=[{"role": "user", "content": "ECHO2"}], stream=True
        )
        list(stream)
    assert UPSTREAM_KEY not in str(streamed.value)


def test_a_retryable_fault_is_retried_not_passed_on(
    oa: openai.OpenAI, upstream: LoopbackServer
) -> None:
    upstream.inject(Fault("status", status=503, match="FLAKY"), Fault("drop", match="FLAKY"))
    answer = oa.chat.completions.create(
        model="loopback", messages=[{"role": "user", "content": "FLAKY"}], stream=False
    )
    assert answer.choices[0].message.content


def wait_for(check: Any, what: str, limit_s: float = 60.0) -> None:
    # A liveness wait, not a timing bound: the condition is what the test checks.
    end = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_cancels_its_calls(
    proxy: Proxy, upstream: LoopbackServer, stream: bool
) -> None:
    word = f"GONE{int(stream)}"
    upstream.inject(Fault("hang", match=word, times=1000))
    before = upstream.stats()["disconnects"]
    body = {
        "model": "sot/loopback",
        "messages": [{"role": "user", "content": word}],
        "stream": stream,
    }
    with (
        httpx.Client(base_url=proxy.url, timeout=httpx.Timeout(60, read=1.0)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post("/chat/completions", json=body)
    # The proxy hangs up on the upstream once its client hung up on it.
    wait_for(lambda: upstream.stats()["disconnects"] > before, "the upstream call cancelled")
    wait_for(lambda: upstream.stats()["in_flight"] == 0, "nothing left in flight")
    upstream.reset()


def test_binding_beyond_loopback_needs_a_client_key(upstream: LoopbackServer) -> None:
    command = [sys.executable, "-m", "sotflow.serve", "--upstream", upstream.base_url]
    result = subprocess.run(
        [*command, "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENAI_API_KEY": UPSTREAM_KEY, "SOTFLOW_API_KEY": ""},
        timeout=60,
    )
    assert result.returncode == 2
    assert "--api-key" in result.stderr and UPSTREAM_KEY not in result.stderr


def test_client_keys_are_checked(upstream: LoopbackServer) -> None:
    served = Proxy(
        "--upstream",
        upstream.base_url,
        "--upstream-key-env",
        "MY_UPSTREAM_KEY",
        "--api-key",
        CLIENT_KEY,
        env={"MY_UPSTREAM_KEY": UPSTREAM_KEY, "OPENAI_API_KEY": ""},
    )
    try:
        with (
            openai.OpenAI(base_url=served.url, api_key="sk-wrong", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError) as info,
        ):
            bad.chat.completions.create(model="loopback", messages=QUESTION)
        assert CLIENT_KEY not in str(info.value)
        with openai.OpenAI(base_url=served.url, api_key=CLIENT_KEY, max_retries=0) as good:
            answer = good.chat.completions.create(model="sot/loopback", messages=QUESTION)
        assert answer.choices[0].message.content
    finally:
        assert UPSTREAM_KEY not in served.stop()
