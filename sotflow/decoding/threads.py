"""One thread for all of sotflow's model work in a process.

torch's CPU kernels run on OpenMP, and OpenMP gives every OS thread that calls into
them a thread team of its own. On a small machine two teams slow each other down
badly: measured on 2 cores with SmolLM2 in float32, a decode step takes 42-48 ms when
one thread does all the torch work, 67-95 ms once a second thread has also run torch
(and the first thread slows down too). A llama.cpp context, for its part, must never
be used from two threads at once. So the local backend's model loading and every
decode step, and the embedding router's encoder, all run on the one thread made here.

This is process-wide state on purpose: the OpenMP teams it protects are process-wide.
Code of your own that runs heavy torch work in the same process as a ``LocalBackend``
should run it through ``on_model_thread`` too (or in another process).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["model_thread", "on_model_thread"]

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_thread_id: int | None = None


def _remember() -> None:
    global _thread_id
    _thread_id = threading.get_ident()


def model_thread() -> ThreadPoolExecutor:
    """The single-thread executor that runs sotflow's model work."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sotflow-model", initializer=_remember
            )
        return _executor


def on_model_thread(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` on the model thread and return its result (blocking)."""
    if threading.get_ident() == _thread_id:
        return fn(*args)
    return model_thread().submit(fn, *args).result()
