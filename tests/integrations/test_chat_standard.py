"""langchain-tests' standard suites for ChatSotflow, against the loopback server.

Capability flags are honest: tool calling, tool choice, structured output and JSON mode
go through as one direct call and the loopback server answers them in shape; images,
audio, PDFs and Anthropic-style inputs are not supported (sotflow sends text), and the
suites skip those tests themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from sotflow.integrations.langchain import ChatSotflow
from sotflow.testing import LoopbackServer

# The standard suites' async tests are plain coroutines; the anyio plugin runs them.
pytestmark = pytest.mark.anyio


class TestChatSotflowUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSotflow]:
        return ChatSotflow

    @property
    def chat_model_params(self) -> dict:
        # Never contacted: unit tests only build the model.
        return {"model": "loopback", "base_url": "http://127.0.0.1:9/v1"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {
                "OPENAI_API_KEY": "sk-from-env",
                "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                "SOTFLOW_MODEL": "env-model",
            },
            {},
            {
                "api_key": "sk-from-env",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "env-model",
            },
        )

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "other-model"


@pytest.fixture(scope="module")
def standard_server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


class TestChatSotflowIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _server(self, standard_server: LoopbackServer) -> None:
        self.base_url = standard_server.base_url

    @property
    def chat_model_class(self) -> type[ChatSotflow]:
        return ChatSotflow

    @property
    def chat_model_params(self) -> dict:
        return {"model": "loopback", "base_url": self.base_url, "api_key": "test"}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "other-model"
