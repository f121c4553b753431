"""sotflow: meta-generation strategies, above all Skeleton-of-Thought, as graphs of
concurrent model calls."""

from .errors import (
    BudgetExceededError,
    ConfigurationError,
    DeadlineExceededError,
    SotflowError,
)
from .types import Answer, Completion, Message, Request, SamplingParams, Usage

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "BudgetExceededError",
    "Completion",
    "ConfigurationError",
    "DeadlineExceededError",
    "Message",
    "Request",
    "SamplingParams",
    "SotflowError",
    "Usage",
    "__version__",
]
