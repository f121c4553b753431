"""Strategies: each turns a question into a graph of model calls and functions."""

from .best_of_n import BestOfN
from .chain import Chain
from .direct import Direct, Passthrough
from .refine import Refine
from .rejection import RejectionSampling
from .routed import Routed
from .scoring import Judge
from .self_consistency import SelfConsistency
from .skeleton import SkeletonOfThought
from .tree_search import TreeSearch

__all__ = [
    "BestOfN",
    "Chain",
    "Direct",
    "Judge",
    "Passthrough",
    "Refine",
    "RejectionSampling",
    "Routed",
    "SelfConsistency",
    "SkeletonOfThought",
    "TreeSearch",
]
