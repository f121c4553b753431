"""langchain-tests' integration suite for ChatSotflow on the bundled local model.

ChatSotflow(backend=LocalBackend("smollm2")): the suite's calls run in-process on the
CPU. The local model writes text only, so tool calling, structured output and JSON
mode are off (LocalBackend refuses them by name, see test_the_local_model_refuses_tools),
and so is a per-call model (it serves one). Replies are kept short; the assertions are
the suite's, about behaviour, never about exact text.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

import sotflow
from sotflow.backends.local import LocalBackend
from sotflow.integrations.langchain import ChatSotflow

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2() -> LocalBackend:
    return LocalBackend("smollm2", device="cpu")


class TestChatSotflowLocal(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _backend(self, smollm2: LocalBackend) -> None:
        self.backend = smollm2

    @property
    def chat_model_class(self) -> type[ChatSotflow]:
        return ChatSotflow

    @property
    def chat_model_params(self) -> dict:
        return {"backend": self.backend, "strategy": "direct", "max_tokens": 4}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False


def test_the_local_model_refuses_tools_and_answers_a_sot_question(smollm2: LocalBackend) -> None:
    model = ChatSotflow(backend=smollm2, strategy="direct", max_tokens=8)

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    with pytest.raises(sotflow.ConfigurationError, match="LocalBackend cannot honour tools"):
        model.bind_tools([add]).invoke("What is 1 + 2?")
    sot = ChatSotflow(
        backend=smollm2,
        strategy=sotflow.SkeletonOfThought(
            skeleton_max_tokens=40,
            point_max_tokens=12,
            fallback_max_tokens=12,
            max_points=3,
            min_points=2,
        ),
    )
    reply = sot.invoke("Give me tips for sleeping well.")
    assert reply.content and reply.usage_metadata["output_tokens"] > 0
    assert reply.response_metadata["strategy"] in ("sot", "direct")  # a tiny model may not outline
