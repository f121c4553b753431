"""ChatSotflow: a LangChain chat model that answers with a sotflow strategy."""

from __future__ import annotations

import functools
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Literal

import anyio
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env, secret_from_env
from langchain_core.utils.function_calling import convert_to_openai_function, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, Field, PrivateAttr, SecretStr

from ...backends.base import Backend, ModelView, check_backend
from ...backends.openai import OpenAIBackend
from ...engine import Engine
from ...errors import ConfigurationError
from ...strategies.base import Strategy
from ...strategies.direct import Passthrough
from ...strategies.registry import make_strategy
from ...types import Answer, Message, Request, SamplingParams, ToolCall
from ._bridge import SYNC_LOOP, Publisher, RunFeed, produce, run_async, run_sync
from ._convert import ai_message, last_chunk, to_messages, to_question

__all__ = ["ChatSotflow"]

# What a call may set, besides stop: LangChain's standard parameters and the
# OpenAI-shaped fields that bind_tools / with_structured_output bind.
_CALL_OPTIONS = (
    "model",
    "temperature",
    "max_tokens",
    "strategy",
    "tools",
    "tool_choice",
    "response_format",
)
# Set by LangChain itself, or by our stream overrides: not options to refuse.
_PUBLISHER = "_sotflow_publisher"
_IGNORED = ("stream", _PUBLISHER)
# Given together with backend=..., these would configure a backend that is not made.
_BACKEND_SETTINGS = ("base_url", "api_key", "max_concurrency", "rpm", "tpm", "prefill")


@dataclass
class _Plan:
    """One call, decided: what runs, on what question, and what to tell the caller."""

    engine: Engine
    strategy: Strategy
    question: str
    stops: tuple[str, ...]
    model: str
    warnings: list[str] = field(default_factory=list)

    async def run(self, put: Callable[[Any], None]) -> None:
        await self.engine.run(self.strategy, self.question, on_event=put)


def _close_on_sync_loop(backend: Backend) -> None:
    SYNC_LOOP.submit(backend.aclose)


class ChatSotflow(BaseChatModel):
    """A LangChain chat model whose answers come from a sotflow strategy.

    ``ChatSotflow(model="gpt-4o-mini", strategy="auto")`` talks to any OpenAI-compatible
    API the way the SDK does: ``base_url`` and ``api_key`` default to ``OPENAI_BASE_URL``
    and ``OPENAI_API_KEY``, the model to ``SOTFLOW_MODEL`` or ``gpt-4o-mini``.
    ``ChatSotflow(backend=..., strategy=SkeletonOfThought())`` uses a backend you made
    (local, scripted, a shared one) with its limits.

    ``strategy`` is a name (``"auto"``: a router picks SoT, dependency-aware SoT or a
    direct answer per question; ``"sot"``, ``"direct"``, ``"self-consistency"``, ...) or
    a strategy instance. By name, ``temperature`` and ``max_tokens`` are the strategy's
    settings as the CLI's ``--temperature``/``--max-tokens`` are; an instance keeps its
    own (they then apply to direct calls only, and the reply's warnings say so). ``stop``
    ends the answer at the first stop sequence; on a direct call the API stops there.

    ``"direct"``, and every call with tools bound, a tool-role history or a response
    format, is one call with the conversation as it is: a meta-generation strategy has
    no meaning there. That is how ``bind_tools``, ``with_structured_output`` and agents
    (``create_react_agent``) work. Other strategies answer the conversation as one
    question (its system messages first, earlier turns written out).

    The reply is an ``AIMessage`` with ``usage_metadata`` (summed over every call the
    strategy made) and ``response_metadata``: ``model_name``, ``strategy`` (the one
    that answered), ``latency_s``, ``warnings``, ``finish_reason``. Streams yield the
    answer in reading order, with usage on the last chunk. ``astream_events`` also
    carries one ``sotflow_node`` custom event per graph node and one ``sotflow_retry``
    per retry, live in sync use too.

    Retries are the engine's (``max_retries``, per attempt ``timeout``); LangChain's
    ``with_retry`` on top multiplies them: each of its attempts retries again.

    The backend's HTTP sessions close with ``aclose()`` / ``close()``, ``async with``
    or ``with``, and otherwise when their event loop ends.
    """

    model: str | None = None
    """The model; with ``backend=...``, the backend's (set from it)."""
    base_url: str | None = Field(default_factory=from_env("OPENAI_BASE_URL", default=None))
    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("OPENAI_API_KEY", default=None)
    )
    strategy: Any = "auto"
    """A strategy name or instance."""
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    max_retries: int = 4
    """Retries per model call, by the engine (the one retry layer)."""
    timeout: float | None = 120.0
    """Seconds per attempt of one model call."""
    max_concurrency: int | None = 64
    """Calls in flight at once on the backend this model makes."""
    rpm: int | None = None
    tpm: int | None = None
    prefill: bool = False
    """The server continues a prefilled assistant message (vLLM, ``sotflow serve``)."""
    streaming: bool = False
    """Stream even when called with ``invoke`` (LangChain's flag)."""
    backend: Any = Field(default=None, exclude=True)
    """A ready sotflow backend, instead of the OpenAI one made from the settings above."""

    _backend: Any = PrivateAttr(default=None)
    _engine: Any = PrivateAttr(default=None)
    _strategies: dict[tuple[Any, ...], Strategy] = PrivateAttr(default_factory=dict)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Checked here, not in a pydantic validator: a ConfigurationError (a ValueError)
        # raised there would reach the user as a pydantic ValidationError.
        self._setup()

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "OPENAI_API_KEY"}

    def _setup(self) -> None:
        if isinstance(self.strategy, str):
            make_strategy(self.strategy)  # an unknown name fails now, not at the first call
        elif isinstance(self.strategy, type) or not isinstance(self.strategy, Strategy):
            raise ConfigurationError(
                "strategy must be a sotflow strategy instance (SkeletonOfThought(), Direct(), "
                f"...) or its name ('auto', 'sot', 'direct', ...); got {self.strategy!r}"
            )
        for name, value in (("max_tokens", self.max_tokens), ("max_retries", self.max_retries)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigurationError(f"{name} must be a non-negative integer, got {value!r}")
        if self.backend is not None:
            check_backend(self.backend, "backend", optional=False)
            given = sorted(set(_BACKEND_SETTINGS) & self.model_fields_set)
            if given:
                raise ConfigurationError(
                    f"{', '.join(given)} configure the OpenAI backend ChatSotflow makes; with "
                    "backend=..., set them on that backend instead"
                )
            if self.model is not None and self.model != self.backend.model:
                raise ConfigurationError(
                    f"model={self.model!r} differs from the backend's model "
                    f"{self.backend.model!r}; set the model on the backend"
                )
            backend = self.backend
        else:
            backend = OpenAIBackend(
                model=self.model,
                base_url=self.base_url,
                api_key=self.api_key.get_secret_value() if self.api_key else None,
                max_concurrency=self.max_concurrency,
                rpm=self.rpm,
                tpm=self.tpm,
                prefill=self.prefill,
            )
            # Sync calls open HTTP sessions on the shared background loop: close them
            # there when this model goes away (at the latest, the loop closes them at
            # exit). A backend passed in is the caller's, maybe shared: left alone.
            weakref.finalize(self, _close_on_sync_loop, backend)
        self.model = backend.model
        self._backend = backend
        self._engine = Engine(backend, max_retries=self.max_retries, timeout=self.timeout)

    # -- LangChain's descriptions ------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "sotflow"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "strategy": self._strategy_name(self.strategy),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    @staticmethod
    def _strategy_name(strategy: Any) -> str:
        return strategy if isinstance(strategy, str) else str(getattr(strategy, "name", strategy))

    def _get_invocation_params(
        self, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        kwargs.pop(_PUBLISHER, None)
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="sotflow",
            ls_model_name=str(kwargs.get("model") or self.model),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stop = stop or self.stop
        if stop:
            params["ls_stop"] = list(stop)
        return params

    # -- deciding a call -----------------------------------------------------------------

    def _plan(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> _Plan:
        unknown = sorted(set(kwargs) - set(_CALL_OPTIONS) - set(_IGNORED))
        if unknown:
            raise ConfigurationError(
                f"ChatSotflow got {', '.join(map(repr, unknown))}, which it does not take; per "
                f"call it takes stop and {', '.join(_CALL_OPTIONS)}"
            )
        temperature = kwargs.get("temperature", self.temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        stops = tuple(stop if stop is not None else self.stop or ())
        strategy_setting = kwargs.get("strategy", self.strategy)
        model = kwargs.get("model") or self.model
        engine = self._engine
        if model != self.model:
            engine = Engine(
                ModelView(self._backend, model), retry=self._engine.retry, timeout=self.timeout
            )
        conversation = to_messages(messages)
        tools = tuple(kwargs.get("tools") or ())
        request_fields = {
            "tools": tools,
            "tool_choice": kwargs.get("tool_choice"),
            "response_format": kwargs.get("response_format"),
        }
        whole = Request(tuple(conversation), **request_fields)  # type: ignore[arg-type]
        if whole.tool_fields() or strategy_setting == "direct":
            params = SamplingParams(max_tokens=max_tokens, temperature=temperature, stop=stops)
            request = Request(tuple(conversation), params, **request_fields)  # type: ignore[arg-type]
            return _Plan(engine, Passthrough(request), _label(conversation), stops, model)
        warnings = []
        if isinstance(strategy_setting, str):
            strategy = self._named(strategy_setting, temperature, max_tokens)
        else:
            strategy = strategy_setting
            given = [
                f"{name}={value!r}"
                for name, value in (("temperature", temperature), ("max_tokens", max_tokens))
                if value is not None
            ]
            if given:
                warnings.append(
                    f"{', '.join(given)} applied to direct calls only: the strategy "
                    f"{strategy!r} keeps its own settings"
                )
        return _Plan(engine, strategy, to_question(messages), stops, model, warnings)

    def _named(self, name: str, temperature: float | None, max_tokens: int | None) -> Strategy:
        key = (name, temperature, max_tokens)
        strategy = self._strategies.get(key)
        if strategy is None:
            strategy = make_strategy(name, temperature=temperature, max_tokens=max_tokens)
            self._strategies[key] = strategy
        return strategy

    def _reply_parts(
        self, plan: _Plan, answer: Answer, feed: RunFeed
    ) -> tuple[str, tuple[ToolCall, ...], dict[str, Any]]:
        text, stopped = feed.text.cut(answer.text)
        details = answer.details
        calls = tuple(details.get("tool_calls") or ())
        reason = "stop" if stopped else details.get("finish_reason") or "stop"
        metadata = {
            "model_name": details.get("model") or plan.model,
            "finish_reason": reason,
            "strategy": answer.strategy,
            "latency_s": answer.latency_s,
            "warnings": [*(answer.trace.warnings if answer.trace else ()), *plan.warnings],
        }
        if answer.usage.estimated:
            metadata["usage_estimated"] = True
        return text, calls, metadata

    # -- sync --------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        publisher = Publisher.of(run_manager) or kwargs.get(_PUBLISHER)
        plan = self._plan(messages, stop, kwargs)
        feed = RunFeed(plan.stops)
        for item in run_sync(functools.partial(produce, plan.run)):
            custom, _ = feed.take(item)
            if custom is not None and publisher is not None:
                publisher.publish(*custom)
        return self._result(plan, feed)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        publisher = Publisher.of(run_manager) or kwargs.get(_PUBLISHER)
        plan = self._plan(messages, stop, kwargs)
        feed = RunFeed(plan.stops)
        for item in run_sync(functools.partial(produce, plan.run)):
            custom, text = feed.take(item)
            if custom is not None and publisher is not None:
                publisher.publish(*custom)
            if text:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        yield self._final_chunk(plan, feed)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        # LangChain's stream() does not hand its run to _stream; custom events need it.
        config, publisher = self._stream_run(config)
        yield from super().stream(input, config, stop=stop, **{_PUBLISHER: publisher, **kwargs})

    # -- async -------------------------------------------------------------------------

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        publisher = Publisher.of(run_manager) or kwargs.get(_PUBLISHER)
        plan = self._plan(messages, stop, kwargs)
        feed = RunFeed(plan.stops)
        async for item in run_async(functools.partial(produce, plan.run)):
            custom, _ = feed.take(item)
            if custom is not None and publisher is not None:
                await publisher.apublish(*custom)
        return self._result(plan, feed)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        publisher = Publisher.of(run_manager) or kwargs.get(_PUBLISHER)
        plan = self._plan(messages, stop, kwargs)
        feed = RunFeed(plan.stops)
        async for item in run_async(functools.partial(produce, plan.run)):
            custom, text = feed.take(item)
            if custom is not None and publisher is not None:
                await publisher.apublish(*custom)
            if text:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        yield self._final_chunk(plan, feed)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config, publisher = self._stream_run(config)
        async for chunk in super().astream(
            input, config, stop=stop, **{_PUBLISHER: publisher, **kwargs}
        ):
            yield chunk

    # -- results -----------------------------------------------------------------------

    def _stream_run(self, config: RunnableConfig | None) -> tuple[RunnableConfig, Publisher]:
        """Fix the run id LangChain will give this stream, and a publisher for that run."""
        config = ensure_config(config)
        run_id = config.get("run_id") or uuid.uuid4()
        config = {**config, "run_id": run_id}
        manager = CallbackManager.configure(
            config.get("callbacks"),
            self.callbacks,
            self.verbose,
            config.get("tags"),
            self.tags,
            config.get("metadata"),
            self.metadata,
        )
        return config, Publisher(manager.handlers, run_id, manager.tags, manager.metadata)

    def _result(self, plan: _Plan, feed: RunFeed) -> ChatResult:
        answer = feed.result()
        text, calls, metadata = self._reply_parts(plan, answer, feed)
        message = ai_message(text, calls, answer.usage, metadata)
        usage = answer.usage
        llm_output = {
            "token_usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
            "model_name": metadata["model_name"],
        }
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output=llm_output)

    def _final_chunk(self, plan: _Plan, feed: RunFeed) -> ChatGenerationChunk:
        answer = feed.result()
        text, calls, metadata = self._reply_parts(plan, answer, feed)
        rest, whole = feed.text.finish(answer.text)
        if not whole:
            metadata["warnings"].append(
                "a retried stream wrote different text after part of it had been streamed; "
                "the chunks end where the texts part, and the whole answer is in "
                "response_metadata['answer_text']"
            )
            metadata["answer_text"] = text
        return ChatGenerationChunk(message=last_chunk(rest, calls, answer.usage, metadata))

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
        totals: dict[str, int] = {}
        model = None
        for output in llm_outputs:
            if not output:
                continue
            model = model or output.get("model_name")
            for key, value in (output.get("token_usage") or {}).items():
                totals[key] = totals.get(key, 0) + value
        return {"token_usage": totals, "model_name": model}

    # -- tools and structured output -----------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (any form LangChain converts to OpenAI's) for direct calls.

        ``tool_choice``: ``"auto"``, ``"none"``, ``"required"`` (or ``"any"``), a tool's
        name, ``True`` for the only tool, or OpenAI's dict.
        """
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        names = [t["function"]["name"] for t in formatted]
        if tool_choice is not None and tool_choice is not False:
            kwargs["tool_choice"] = _tool_choice(tool_choice, names)
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Replies parsed into ``schema`` (a pydantic class, a TypedDict, a JSON schema).

        ``method``: ``"json_schema"`` (the API's structured output), ``"function_calling"``
        (a forced call of a tool with the schema), ``"json_mode"`` (any JSON object; the
        prompt must describe it). Each is one direct call.
        """
        if kwargs:
            raise ConfigurationError(
                f"with_structured_output got {', '.join(map(repr, sorted(kwargs)))}; it "
                "takes method, include_raw and strict"
            )
        if strict is not None and method == "json_mode":
            raise ConfigurationError("strict does not apply to method='json_mode'")
        pydantic_class = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace_format = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: Runnable[Any, Any]
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=name, strict=strict, ls_structured_output_format=trace_format
            )
            if pydantic_class:
                parser = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                response_format = _json_schema_format(schema, strict)
            else:
                response_format = {"type": "json_object"}
            llm = self.bind(
                response_format=response_format, ls_structured_output_format=trace_format
            )
            if pydantic_class:
                parser = PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
            else:
                parser = JsonOutputParser()
        else:
            raise ConfigurationError(
                f"method must be 'json_schema', 'function_calling' or 'json_mode', got {method!r}"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [unparsed], exception_key="parsing_error"
        )

    # -- resources ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the backend's sessions: this loop's now, the sync calls' loop's too."""
        await self._backend.aclose()
        if SYNC_LOOP.running:
            await anyio.to_thread.run_sync(SYNC_LOOP.call, self._backend.aclose)

    def close(self) -> None:
        """Close the backend's sessions on the sync calls' loop."""
        SYNC_LOOP.call(self._backend.aclose)

    async def __aenter__(self) -> ChatSotflow:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> ChatSotflow:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _label(conversation: list[Message]) -> str:
    """What the trace and answer call a conversation sent as it is."""
    for message in reversed(conversation):
        if message.role == "user" and message.content.strip():
            return message.content
    return f"(a conversation of {len(conversation)} messages)"


def _tool_choice(choice: dict[str, Any] | str | bool, names: list[str]) -> Any:
    if isinstance(choice, dict):
        return choice
    if choice is True:
        if len(names) != 1:
            raise ConfigurationError(
                f"tool_choice=True needs exactly one tool, got {len(names)}; name the tool"
            )
        choice = names[0]
    if choice == "any":
        return "required"
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, str) and choice in names:
        return {"type": "function", "function": {"name": choice}}
    raise ConfigurationError(
        f"tool_choice {choice!r} is not 'auto', 'none', 'required', 'any' or one of the "
        f"tools ({', '.join(names)})"
    )


def _json_schema_format(schema: dict[str, Any] | type, strict: bool | None) -> dict[str, Any]:
    """OpenAI's ``json_schema`` response format for ``schema``."""
    if isinstance(schema, dict) and schema.get("type") == "json_schema" and "json_schema" in schema:
        return schema
    if isinstance(schema, dict) and "name" in schema and "schema" in schema:
        return {"type": "json_schema", "json_schema": schema}
    function = convert_to_openai_function(schema, strict=strict)
    spec: dict[str, Any] = {"name": function["name"], "schema": function["parameters"]}
    if function.get("description"):
        spec["description"] = function["description"]
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}
