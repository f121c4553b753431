"""sotflow: meta-generation strategies, above all Skeleton-of-Thought, as graphs of
concurrent model calls.

>>> import sotflow
>>> backend = sotflow.OpenAIBackend(model="gpt-4o-mini")
>>> async with sotflow.Engine(backend) as engine:
...     answer = await engine.run(sotflow.Direct(), "How do I sleep better?")
"""

from .backends.base import Backend, Capabilities, ServerProfile
from .backends.local import LocalBackend
from .backends.openai import OpenAIBackend
from .backends.scripted import Fail, Reply, ScriptedBackend
from .engine import Engine, EventStream
from .errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BackendError,
    BadRequestError,
    BudgetExceededError,
    ConfigurationError,
    DeadlineExceededError,
    GraphError,
    MalformedResponseError,
    NoAnswerError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    SotflowError,
    StreamInterruptedError,
)
from .events import (
    AnswerDelta,
    AnswerReset,
    Event,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    Retrying,
    RunFinished,
    RunStarted,
    StreamReset,
    TextDelta,
)
from .graph import Call, Embed, Expand, Graph, NodeContext, Outcome, Part, Result, Step
from .limits import Limiter
from .retry import RetryPolicy
from .routing import EmbeddingRouter, KeywordBaseline, LLMRouter, Router, RuleRouter
from .strategies import (
    BestOfN,
    Chain,
    Direct,
    Judge,
    Refine,
    RejectionSampling,
    Routed,
    SelfConsistency,
    SkeletonOfThought,
    TreeSearch,
)
from .strategies.base import BuildContext, Strategy
from .types import (
    Answer,
    Choice,
    Completion,
    Decision,
    Delta,
    ErrorInfo,
    Message,
    NodeTrace,
    Point,
    Request,
    SamplingParams,
    Trace,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "Answer",
    "AnswerDelta",
    "AnswerReset",
    "AuthenticationError",
    "Backend",
    "BackendError",
    "BadRequestError",
    "BestOfN",
    "BudgetExceededError",
    "BuildContext",
    "Call",
    "Capabilities",
    "Chain",
    "Choice",
    "Completion",
    "ConfigurationError",
    "DeadlineExceededError",
    "Decision",
    "Delta",
    "Direct",
    "Embed",
    "EmbeddingRouter",
    "Engine",
    "ErrorInfo",
    "Event",
    "EventStream",
    "Expand",
    "Fail",
    "Graph",
    "GraphError",
    "Judge",
    "KeywordBaseline",
    "LLMRouter",
    "Limiter",
    "LocalBackend",
    "MalformedResponseError",
    "Message",
    "NoAnswerError",
    "NodeContext",
    "NodeFailed",
    "NodeFinished",
    "NodeStarted",
    "NodeTrace",
    "OpenAIBackend",
    "Outcome",
    "Part",
    "Point",
    "ProviderError",
    "QuotaExceededError",
    "RateLimitError",
    "Refine",
    "RejectionSampling",
    "Reply",
    "Request",
    "Result",
    "RetryPolicy",
    "Retrying",
    "Routed",
    "Router",
    "RuleRouter",
    "RunFinished",
    "RunStarted",
    "SamplingParams",
    "ScriptedBackend",
    "SelfConsistency",
    "ServerError",
    "ServerProfile",
    "SkeletonOfThought",
    "SotflowError",
    "Step",
    "Strategy",
    "StreamInterruptedError",
    "StreamReset",
    "TextDelta",
    "Trace",
    "TreeSearch",
    "Usage",
    "__version__",
]
