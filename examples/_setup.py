"""Shared by the examples: a real API when one is configured, else a local stand-in.

With OPENAI_API_KEY or OPENAI_BASE_URL set, the examples talk to that API. Otherwise
they start sotflow's loopback server, which answers like a model (filler text, real
pacing), so every example runs offline exactly as it would against a provider.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import sotflow
from sotflow.testing import LoopbackServer


@contextlib.contextmanager
def backend() -> Iterator[sotflow.OpenAIBackend]:
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        yield sotflow.OpenAIBackend()
        return
    responder = "sotflow.testing.responders:sot_responder"
    # Paced like a hosted API; SOTFLOW_EXAMPLES_TPS speeds the simulated tokens up
    # (the test suite runs every example and need not wait for them).
    tps = float(os.environ.get("SOTFLOW_EXAMPLES_TPS", "50"))
    with LoopbackServer(ttft=0.25, tps=tps, responder=responder) as server:
        print(f"(no API configured: using the loopback server at {server.base_url})\n")
        yield sotflow.OpenAIBackend(model="loopback", base_url=server.base_url, prefill=True)
