"""langchain-openai's ChatOpenAI pointed at ``sotflow serve --upstream``: langchain-tests'
standard integration suite, the proxy passing every call through to the loopback server.

Tool calling, tool choice, structured output and JSON mode go through the proxy as
direct passthroughs, and the loopback server answers them in shape; images, audio and
PDFs are not sent to the loopback (the suite skips them by these flags).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from sotflow.testing import LoopbackServer
from tests.test_proxy import Proxy

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def proxy_url() -> Iterator[str]:
    with LoopbackServer() as upstream:
        served = Proxy("--upstream", upstream.base_url, env={"OPENAI_API_KEY": "sk-up"})
        try:
            yield served.url
        finally:
            served.stop()


class TestChatOpenAIThroughTheProxy(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _proxy(self, proxy_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.base_url = proxy_url
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict:
        # A fresh async HTTP client per model: langchain-openai's shared default belongs
        # to the event loop of the first test, and each async test runs in its own.
        return {
            "model": "loopback",
            "base_url": self.base_url,
            "api_key": "unused",
            # For a base_url of its own, ChatOpenAI asks for streamed usage only when told.
            "stream_usage": True,
            "http_async_client": httpx.AsyncClient(),
        }

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        # Another model per call: here the same upstream model answered with SoT.
        return "sot/loopback"

    @property
    def returns_usage_metadata(self) -> bool:
        return True
