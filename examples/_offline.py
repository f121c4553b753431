"""Shared by the strategy examples: a real API when one is configured, else a stand-in.

With OPENAI_API_KEY or OPENAI_BASE_URL set, the examples talk to that API. Otherwise a
``ScriptedBackend`` answers from the example's own ``offline`` function, which plays
the model (a few canned replies that vary from sample to sample), so every example runs
offline and shows what the strategy does.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import sotflow


def backend(offline: Callable[[sotflow.Request], str]) -> sotflow.Backend:
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        return sotflow.OpenAIBackend()
    print("(no API configured: a scripted stand-in plays the model)\n")
    return sotflow.ScriptedBackend(offline, delay_s=0.2)
