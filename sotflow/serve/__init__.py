"""An OpenAI-compatible server: a local model, or a strategy proxy over any upstream API.

    POST /v1/chat/completions   plain JSON, or server-sent events with "stream": true
    GET  /v1/models             every name that can be asked for
    GET  /v1/models/{name}

The request's ``model`` picks what answers: a bare ``<model>`` is a direct call, sent
on as it is (tools, tool choice, response formats and tool-call histories included);
``<strategy>/<model>`` answers with a sotflow strategy (``sot/``, ``sot-dag/``,
``auto/``, ``self-consistency/``, ``best-of-n/``, ``refine/``, ``tree-search/``),
streaming its answer in reading order, with usage summed over all its calls. Options
of the strategy come in a ``sotflow`` object in the body. Responses name the strategy
that answered and the run's id in ``x-sotflow-strategy`` and ``x-sotflow-run-id``
headers (and in a ``sotflow`` field of the body, or of a stream's usage chunk).

The layers: ``parse`` checks a body field by field; ``catalog`` resolves the model
name; ``plan`` decides what runs; the engine runs it under the one backend's limits
(fair between clients); ``relay`` turns its events into chunks; ``errors`` gives every
failure OpenAI's error shape. ``cli`` is ``sotflow serve``.

Beyond OpenAI's fields a request may carry ``top_k``, ``min_p``,
``repetition_penalty`` and vLLM's ``"continue_final_message": true`` (with
``"add_generation_prompt": false``) to continue a final assistant message.

Run one with ``sotflow serve --model smollm2`` or ``sotflow serve --upstream URL``.
"""

from __future__ import annotations

from .app import RUN_ID_HEADER, STRATEGY_HEADER, ServeSettings, create_app
from .cli import add_arguments, main, run, serve, serving
from .parse import BadRequest, ChatCall, parse_chat

__all__ = [
    "RUN_ID_HEADER",
    "STRATEGY_HEADER",
    "BadRequest",
    "ChatCall",
    "ServeSettings",
    "add_arguments",
    "create_app",
    "main",
    "parse_chat",
    "run",
    "serve",
    "serving",
]
