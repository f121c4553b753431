"""sotflow in LangChain.

``ChatSotflow`` is a chat model: it stands wherever LangChain takes one (chains,
LangGraph nodes, agents), answers with a sotflow strategy, and passes tool calls and
structured output straight through. ``SotflowRunnable`` is a pipeline step that returns
sotflow's whole ``Answer`` (points, trace, usage) where the message is not enough.
"""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "sotflow.integrations.langchain needs langchain-core: pip install 'sotflow[langchain]'"
    ) from exc

from ._convert import to_question
from .chat_model import ChatSotflow
from .runnable import SotflowRunnable

__all__ = ["ChatSotflow", "SotflowRunnable", "to_question"]
