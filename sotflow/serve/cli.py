"""``sotflow serve``: a local model, or a strategy proxy over an upstream API.

    sotflow serve --model smollm2 --port 8000
    sotflow serve --upstream https://api.openai.com/v1 --port 8000   (key: OPENAI_API_KEY)

Binding to anything but a loopback address needs client keys (``--api-key`` or
``SOTFLOW_API_KEY``): the server spends the upstream's key on every client's behalf.
The upstream's key is read from the environment only (never a flag, which any user of
the machine could read), and no error, log line or response repeats it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
from aiohttp import web

from ..backends.base import Backend
from ..errors import ConfigurationError
from ..limits import Limiter
from .app import ServeSettings, create_app
from .catalog import fetch_models

__all__ = ["add_arguments", "main", "run", "serve", "serving"]

KEYS_ENV = "SOTFLOW_API_KEY"


@asynccontextmanager
async def serving(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 0,
    settings: ServeSettings | None = None,
) -> AsyncIterator[str]:
    """Serve ``backend`` while the block runs; yields the base URL (``http://host:port/v1``).

    ``port=0`` picks a free port. The backend stays open: it is the caller's.
    """
    # handler_cancellation: a client that disconnects cancels its handler, and so its run.
    runner = web.AppRunner(
        create_app(backend, settings), handler_cancellation=True, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        yield f"http://{bound_host}:{bound_port}/v1"
    finally:
        await runner.cleanup()


async def serve(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
) -> None:
    """Serve ``backend`` until cancelled."""
    async with serving(backend, host, port, settings):
        await anyio.sleep_forever()


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options, shared by ``python -m sotflow.serve`` and ``sotflow serve``."""
    # Imported here: the cli package imports this module to build its own parser.
    from ..cli.options import add_local_options

    source = parser.add_argument_group("what answers")
    source.add_argument(
        "--upstream",
        metavar="URL",
        help="proxy to this OpenAI-compatible API (e.g. https://api.openai.com/v1) instead of "
        "serving a local model",
    )
    source.add_argument(
        "--upstream-key-env",
        metavar="NAME",
        default=None,
        help="environment variable that holds the upstream's key (default OPENAI_API_KEY)",
    )
    source.add_argument(
        "--upstream-prefill",
        action="store_true",
        help="the upstream continues a prefilled assistant message (vLLM, sotflow serve)",
    )
    source.add_argument(
        "--models",
        metavar="A,B",
        help="the upstream models to serve (default: what the upstream's GET /models lists)",
    )
    source.add_argument(
        "--model", default=None, help="local model: alias, HF folder, .gguf file (default smollm2)"
    )
    source.add_argument(
        "--max-batch-size",
        type=_positive(int),
        default=16,
        help="local model: requests decoded together in one batch at most (default 16)",
    )
    add_local_options(source, prefix="local model: ")
    source.add_argument(
        "--verbose",
        action="store_true",
        help="also show other libraries' progress bars and log lines while loading",
    )
    net = parser.add_argument_group("serving")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; beyond loopback needs --api-key)",
    )
    net.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    net.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help=f"a key clients must send (repeat for several; or {KEYS_ENV}, comma-separated); "
        "required to bind beyond loopback",
    )
    net.add_argument(
        "--max-body-bytes",
        type=_positive(int),
        default=8 * 1024 * 1024,
        help="largest request body taken; beyond it a 413 (default 8 MiB)",
    )
    limits = parser.add_argument_group("limits, shared by every client")
    limits.add_argument(
        "--max-concurrency",
        type=_positive(int),
        default=None,
        help="model calls in flight at once (default 256 upstream, 64 local)",
    )
    limits.add_argument("--rpm", type=_positive(int), default=None, help="calls per minute")
    limits.add_argument("--tpm", type=_positive(int), default=None, help="tokens per minute")
    limits.add_argument("--timeout", type=_positive(float), default=120.0, help="s per attempt")
    limits.add_argument(
        "--request-timeout", type=_positive(float), default=600.0, help="s per whole request"
    )
    limits.add_argument(
        "--max-retries", type=int, default=4, help="retries of a failed call (default 4)"
    )
    limits.add_argument(
        "--router",
        choices=("rules", "embedding"),
        default="rules",
        help="the router of auto/<model> (default rules)",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _client_keys(args: argparse.Namespace) -> tuple[str, ...]:
    keys = list(args.api_key or ())
    keys += [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    return tuple(dict.fromkeys(keys))


def shown_url(url: str) -> str:
    """``url`` without a user or password in it, for messages."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def _upstream(args: argparse.Namespace, limiter: Limiter) -> tuple[Backend, str | None]:
    from ..backends.openai import OpenAIBackend

    env = args.upstream_key_env or "OPENAI_API_KEY"
    key = os.environ.get(env) or None
    if args.upstream_key_env and key is None:
        raise ConfigurationError(
            f"--upstream-key-env names {env}, which is not set; export {env}=<the upstream's key>"
        )
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    backend = OpenAIBackend(
        model=models[0] if models else None,
        base_url=args.upstream,
        api_key=key,
        max_concurrency=limiter.max_concurrency,
        prefill=args.upstream_prefill,
        limiter=limiter,
    )
    return backend, key


def _local(args: argparse.Namespace, limiter: Limiter) -> Backend:
    from ..cli.options import load_local

    return load_local(
        args, args.model or "smollm2", max_batch_size=args.max_batch_size, limiter=limiter
    )


async def _main(
    args: argparse.Namespace, backend: Backend, settings: ServeSettings, key: str | None
) -> None:
    what = f"{backend.model}"
    if args.upstream:
        models = settings.models
        if models is None:
            try:
                models = tuple(await fetch_models(backend.base_url, key))  # type: ignore[attr-defined]
            except (OSError, ValueError) as exc:
                print(
                    f"sotflow serve: could not list the upstream's models ({exc}); serving any "
                    "model name it takes (give --models A,B to name them)",
                    file=sys.stderr,
                    flush=True,
                )
        settings = dataclasses.replace(settings, models=models)
        shown = ", ".join(models or ()) or "any model"
        what = f"a strategy proxy for {shown_url(args.upstream)} ({shown})"
    try:
        async with serving(backend, args.host, args.port, settings) as url:
            print(f"serving {what} on {url}", flush=True)
            await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await backend.aclose()


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 2 on a configuration error."""
    from ..cli.quiet import hush_third_party, show_third_party

    if args.verbose:
        show_third_party()
    else:
        hush_third_party()
    try:
        keys = _client_keys(args)
        if not _is_loopback(args.host) and not keys:
            raise ConfigurationError(
                f"binding to {args.host} lets anyone who can reach it use the model (and "
                f"spend the upstream's key); give client keys with --api-key KEY or "
                f"{KEYS_ENV}=KEY1,KEY2, or bind to 127.0.0.1"
            )
        if args.upstream and args.model:
            raise ConfigurationError(
                "--model serves a local model and --upstream proxies an API: give one; name the "
                "upstream's models with --models"
            )
        if args.models and not args.upstream:
            raise ConfigurationError("--models names an upstream's models; use it with --upstream")
        default = 256 if args.upstream else 64
        limiter = Limiter(args.max_concurrency or default, args.rpm, args.tpm, fair=True)
        key = None
        if args.upstream:
            backend, key = _upstream(args, limiter)
        else:
            backend = _local(args, limiter)
        models = tuple(m.strip() for m in (args.models or "").split(",") if m.strip()) or None
        settings = ServeSettings(
            api_keys=keys,
            models=models,
            max_body_bytes=args.max_body_bytes,
            timeout=args.timeout,
            request_timeout=args.request_timeout,
            max_retries=args.max_retries,
            router=args.router,
            secrets=(key,) if key else (),
        )
    except ConfigurationError as exc:
        print(f"sotflow serve: error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_main, args, backend, settings, key)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sotflow.serve",
        description="Serve a local model, or proxy an API with sotflow's strategies, over an "
        "OpenAI-compatible HTTP API.",
    )
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args(argv)))
