"""The local backend: a torch/transformers model in-process, decoded in one batch.

Every request in flight is a row of one ``BatchDecoder`` (continuous batching): the
engine's concurrency is what fills the batch. Whichever waiting request finds nothing new
for itself takes the step lock and has one decoder step run on the process's torch
thread (``sotflow.decoding.threads``: one OpenMP team, measured ~1.6x faster than
stepping from varying threads); the step hands every row its tokens, so all other
waiters wake up with news. When the last waiter leaves, stepping stops.

Cancelling a waiting task cancels its rows, which leave the batch at the next step
boundary. A failure inside a step fails every request in the batch with a
``LocalModelError`` and resets the decoder, so nothing hangs.

Greedy rows decode several tokens per step where the decoding mode finds candidates
(by default ``cerberus`` where sotflow bundles draft heads for the model, measured the
fastest; ``prompt_lookup`` otherwise; also ``medusa``, ``plain``, ``jacobi``, ``lookahead``,
``hybrid``); the output is always exactly plain greedy's. ``stats`` returns the
decoder's counters as data.

torch and transformers are imported when a backend is made, never by ``import sotflow``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..decoding.threads import on_torch_thread
from ..errors import BackendError, BadRequestError, ConfigurationError
from ..limits import Limiter
from ..types import Choice, Completion, Delta, Request, TokenLogprob, Usage
from .base import BaseBackend, Capabilities, StreamItem, check_text_request

if TYPE_CHECKING:
    from ..decoding.batched import BatchDecoder, SequenceUpdate, SpeculationConfig
    from ..decoding.heads import DraftHeads
    from ..decoding.sampling import SamplingConfig

__all__ = ["DEFAULT_MAX_TOKENS", "LocalBackend", "LocalModelError"]

DEFAULT_HEADS = "cerberus"
"""The decoding mode for models with bundled heads: the fastest one measured with SmolLM2
on a CPU (``benchmarks/results/local_decoding.json``); output is greedy's either way."""

DEFAULT_MAX_TOKENS = 1024
"""Completion length when a request sets no ``max_tokens`` (the context still caps it)."""


class LocalModelError(BackendError):
    """The local model failed while decoding (a torch error, out of memory, ...)."""


@dataclass(slots=True)
class _ChoiceState:
    seq_id: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    """Decoded text so far, cut at a stop string once one is seen."""
    sent: int = 0
    """Characters of ``text`` already streamed."""
    finish: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


class _Job:
    """One request: ``n`` rows of the decoder and what they produced so far."""

    def __init__(
        self,
        prompt: list[int],
        seq_ids: list[int],
        stops: tuple[str, ...],
        logprobs: bool,
        anchor_text: str,
    ) -> None:
        self.prompt_len = len(prompt)
        self.anchor = prompt[-4:]
        self.anchor_text = anchor_text
        self.choices = [_ChoiceState(s) for s in seq_ids]
        self.stops = tuple(s for s in stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.want_logprobs = logprobs
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.news = True

    @property
    def done(self) -> bool:
        return self.error is not None or all(c.finish is not None for c in self.choices)

    def take_deltas(self) -> list[Delta]:
        """Text ready to stream: everything but a tail that could start a stop string."""
        with self.lock:
            self.news = False
            out = []
            for index, choice in enumerate(self.choices):
                ready = len(choice.text) if choice.finish else len(choice.text) - self.hold
                # An incomplete UTF-8 sequence decodes as U+FFFD; wait for its next bytes.
                while (
                    ready > choice.sent and choice.text[ready - 1] == "\ufffd" and not choice.finish
                ):
                    ready -= 1
                if ready > choice.sent:
                    out.append(Delta(choice.text[choice.sent : ready], index))
                    choice.sent = ready
            return out


class _LoopState:
    """anyio primitives belong to one event loop; a sync wrapper may start another."""

    __slots__ = ("lock", "token")

    def __init__(self, token: object) -> None:
        self.token = token
        self.lock = anyio.Lock()


class LocalBackend(BaseBackend):
    """A model running in this process (see the module docstring)."""

    name = "local"
    capabilities = Capabilities(prefill=True, logprobs=True, n=True)

    def __init__(
        self,
        model: str = "smollm2",
        *,
        device: str = "auto",
        dtype: Any = None,
        max_concurrency: int | None = 64,
        max_batch_size: int = 16,
        decoding: str | SpeculationConfig | None = None,
        heads: str | os.PathLike[str] | DraftHeads | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        rpm: int | None = None,
        tpm: int | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        from ..decoding.model_loading import load_model

        # Loaded and packed on the torch thread, like every step later (see threads.py).
        loaded = on_torch_thread(lambda: load_model(model, device=device, dtype=dtype))
        on_torch_thread(
            lambda: self._setup(
                loaded.model,
                loaded.tokenizer,
                name=loaded.source.name,
                max_batch_size=max_batch_size,
                decoding=decoding,
                heads=heads,
                default_max_tokens=default_max_tokens,
            )
        )
        BaseBackend.__init__(
            self, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm, limiter=limiter
        )

    @classmethod
    def from_model(
        cls,
        hf_model: Any,
        tokenizer: Any,
        *,
        name: str = "local",
        max_concurrency: int | None = 64,
        max_batch_size: int = 16,
        decoding: str | SpeculationConfig | None = None,
        heads: str | os.PathLike[str] | DraftHeads | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        limiter: Limiter | None = None,
    ) -> LocalBackend:
        """Wrap an already loaded ``transformers`` causal LM and its tokenizer."""

        backend = cls.__new__(cls)
        on_torch_thread(
            lambda: backend._setup(
                hf_model,
                tokenizer,
                name=name,
                max_batch_size=max_batch_size,
                decoding=decoding,
                heads=heads,
                default_max_tokens=default_max_tokens,
            )
        )
        BaseBackend.__init__(backend, max_concurrency=max_concurrency, limiter=limiter)
        return backend

    def _setup(
        self,
        hf_model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_batch_size: int,
        decoding: str | SpeculationConfig | None,
        heads: str | os.PathLike[str] | DraftHeads | None,
        default_max_tokens: int,
    ) -> None:
        from ..decoding.forward import DecoderModel

        try:
            self._model = DecoderModel(hf_model)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.model = name
        self.default_max_tokens = default_max_tokens
        self._heads_source = heads
        self._heads: dict[str, DraftHeads] = {}
        self.decoder: BatchDecoder = self._new_decoder(decoding, max_batch_size)
        self._eos = self._eos_ids(hf_model, tokenizer)
        self._jobs: dict[int, tuple[_Job, int]] = {}
        self._step_lock = threading.Lock()
        self._state: _LoopState | None = None
        self.requests = 0

    @staticmethod
    def _eos_ids(hf_model: Any, tokenizer: Any) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(hf_model, "generation_config", None), hf_model.config, tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(v) for v in value)
        return frozenset(ids)

    # ------------------------------------------------------------------ prompts
    def encode(self, request: Request) -> list[int]:
        """The prompt's token ids: the chat template, continuing ``request.prefill`` if set."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        prefill = request.prefill
        if getattr(self.tokenizer, "chat_template", None):
            if prefill is not None:
                messages.append({"role": "assistant", "content": prefill})
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, continue_final_message=True
                )
                # The template may strip the message; trailing spaces of a prefill matter.
                if not text.endswith(prefill) and text.endswith(prefill.rstrip()):
                    text += prefill[len(prefill.rstrip()) :]
            else:
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
        else:
            # A base model without a template: a plain transcript it can continue.
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
            text += "Assistant: " + (prefill or "")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(ids)

    def estimate_tokens(self, request: Request) -> int:
        try:
            prompt = len(self.encode(request))
        except Exception:
            return super().estimate_tokens(request)
        return prompt + request.params.n * (request.params.max_tokens or self.default_max_tokens)

    def _decode_text(self, anchor: list[int], anchor_text: str, tokens: list[int]) -> str:
        # Decoding after a few prompt tokens keeps a leading space that a tokenizer
        # would drop when decoding the continuation on its own.
        text = self.tokenizer.decode(anchor + tokens, skip_special_tokens=True)
        if text.startswith(anchor_text):
            return text[len(anchor_text) :]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # ------------------------------------------------------------------ jobs
    def _sampling(self, request: Request, index: int) -> SamplingConfig:
        from ..decoding.sampling import SamplingConfig

        p = request.params
        seed = None if p.seed is None else p.seed + index
        return SamplingConfig(
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            min_p=p.min_p,
            repetition_penalty=p.repetition_penalty,
            seed=seed,
        )

    def _start(self, request: Request) -> _Job:
        from ..decoding.batched import SequenceRequest

        # Tools, response formats and other models are refused, never silently dropped.
        check_text_request(request, "LocalBackend", model=self.model)
        prompt = self.encode(request)
        p = request.params
        limit = self._model.max_positions
        if len(prompt) >= limit:
            raise BadRequestError(
                f"the prompt has {len(prompt)} tokens but the model's context is {limit}; "
                f"shorten the messages",
                status_code=400,
                code="context_length_exceeded",
            )
        max_new = p.max_tokens or self.default_max_tokens
        top = (p.top_logprobs or 0) if p.logprobs else None
        seq_ids = []
        for index in range(p.n):
            seq_ids.append(
                self.decoder.submit(
                    SequenceRequest(
                        prompt,
                        max_new,
                        self._sampling(request, index),
                        self._eos,
                        top,
                    )
                )
            )
        anchor_text = self.tokenizer.decode(prompt[-4:], skip_special_tokens=True)
        job = _Job(prompt, seq_ids, p.stop, p.logprobs, anchor_text)
        with self._step_lock:
            for index, seq_id in enumerate(seq_ids):
                self._jobs[seq_id] = (job, index)
        self.requests += 1
        return job

    def _apply(self, update: SequenceUpdate) -> None:
        entry = self._jobs.get(update.seq_id)
        if entry is None:
            return
        job, index = entry
        with job.lock:
            choice = job.choices[index]
            if choice.finish is not None:
                return
            choice.tokens.extend(update.tokens)
            if job.want_logprobs and update.logprobs:
                choice.logprobs.extend(self._logprobs(update.logprobs))
            text = self._decode_text(job.anchor, job.anchor_text, choice.tokens)
            finish = update.finish_reason
            cut = self._find_stop(text, job.stops, len(choice.text) - job.hold)
            if cut is not None:
                text, finish = text[:cut], "stop"
                if update.finish_reason is None:
                    self.decoder.cancel(update.seq_id)
            choice.text = text
            choice.finish = finish
            job.news = True
        if finish is not None:
            self._jobs.pop(update.seq_id, None)

    @staticmethod
    def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
        best: int | None = None
        for stop in stops:
            at = text.find(stop, max(0, start - len(stop)))
            if at >= 0 and (best is None or at < best):
                best = at
        return best

    def _logprobs(self, items: Sequence[Any]) -> list[TokenLogprob]:
        decode = self.tokenizer.decode
        return [
            TokenLogprob(
                decode([item.token]),
                item.logprob,
                tuple((decode([t]), lp) for t, lp in item.top),
            )
            for item in items
        ]

    def _step_sync(self) -> None:
        """Run one decoder step (in a worker thread) and hand every job its news."""
        with self._step_lock:
            try:
                updates = self.decoder.step()
            except Exception as exc:
                dropped = self.decoder.reset()
                error = LocalModelError(f"the local model failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                for seq_id in dropped:
                    entry = self._jobs.pop(seq_id, None)
                    if entry is not None:
                        with entry[0].lock:
                            entry[0].error = error
                            entry[0].news = True
                return
            for update in updates:
                self._apply(update)

    def _loop_state(self) -> _LoopState:
        token = anyio.lowlevel.current_token()
        state = self._state
        if state is None or state.token != token:
            state = self._state = _LoopState(token)
        return state

    async def _wait(self, job: _Job) -> None:
        """Return once ``job`` has news, running decoder steps while it has none."""
        state = self._loop_state()
        async with state.lock:
            if job.news or job.done:
                return
            if not self.decoder.has_work:
                job.error = LocalModelError("internal error: a request was lost by the decoder")
                return
            # The step runs on the process's one torch thread; an anyio worker waits for it.
            await anyio.to_thread.run_sync(on_torch_thread, self._step_sync)

    def _cancel(self, job: _Job) -> None:
        for choice in job.choices:
            if choice.finish is None:
                self.decoder.cancel(choice.seq_id)
            self._jobs.pop(choice.seq_id, None)

    def _completion(self, job: _Job) -> Completion:
        choices = tuple(
            Choice(
                index=i,
                text=c.text,
                finish_reason=c.finish,
                logprobs=tuple(c.logprobs) if job.want_logprobs else None,
            )
            for i, c in enumerate(job.choices)
        )
        completion_tokens = sum(len(c.tokens) for c in job.choices)
        return Completion(choices, Usage.of(job.prompt_len, completion_tokens), self.model)

    # ------------------------------------------------------------------ protocol
    async def complete(self, request: Request) -> Completion:
        job = self._start(request)
        try:
            while not job.done:
                await self._wait(job)
                job.news = False
        finally:
            if not job.done:
                self._cancel(job)
        if job.error is not None:
            raise job.error
        return self._completion(job)

    async def stream(self, request: Request) -> AsyncIterator[StreamItem]:
        job = self._start(request)
        try:
            while True:
                for delta in job.take_deltas():
                    yield delta
                if job.done:
                    break
                await self._wait(job)
            if job.error is not None:
                raise job.error
            for delta in job.take_deltas():
                yield delta
            yield self._completion(job)
        finally:
            if not job.done:
                self._cancel(job)

    @property
    def stats(self) -> dict[str, Any]:
        """Decoder counters (steps, accepted tokens per step, prefill sharing, timings)."""
        out = self.decoder.stats.as_dict()
        out["requests"] = self.requests
        out["mode"] = self.decoder.config.mode
        return out

    def set_decoding(self, decoding: str | SpeculationConfig | None) -> None:
        """Switch the decoding mode (only while idle); the model and its cache stay."""
        if self.decoder.has_work:
            raise BackendError("cannot switch the decoding mode while requests are running")
        # A new decoder allocates its cache: torch work, so on the torch thread.
        self.decoder = on_torch_thread(
            lambda: self._new_decoder(decoding, self.decoder.max_batch_size)
        )

    def _new_decoder(
        self, decoding: str | SpeculationConfig | None, max_batch_size: int
    ) -> BatchDecoder:
        from ..decoding.batched import BatchDecoder, SpeculationConfig

        if decoding is None:
            decoding = self._default_mode()
        if isinstance(decoding, str):
            try:
                decoding = SpeculationConfig(mode=decoding)  # type: ignore[arg-type]
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from exc
        heads = self._draft_heads(decoding.mode) if decoding and decoding.uses_heads else None
        try:  # the decoder checks that the heads' kind is the mode's
            return BatchDecoder(
                self._model, max_batch_size=max_batch_size, speculation=decoding, heads=heads
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc

    def _default_mode(self) -> str | None:
        """Heads given without a mode decode as their kind says; a model with bundled
        heads gets ``DEFAULT_HEADS``; anything else the decoder's default."""
        from ..decoding.heads import bundled_heads

        if self._heads_source is not None:
            heads = self._load_heads(self._heads_source)
            self._heads.setdefault(heads.kind, heads)
            return heads.kind
        if bundled_heads(self.model, DEFAULT_HEADS) is not None:
            return DEFAULT_HEADS
        return None

    def _draft_heads(self, kind: str) -> DraftHeads:
        """The heads for ``decoding=kind``: those passed as ``heads=``, else the ones
        bundled for this model (loaded once per kind)."""
        from ..decoding.heads import bundled_heads

        if kind in self._heads:
            return self._heads[kind]
        source = self._heads_source
        if source is None:
            source = bundled_heads(self.model, kind)
            if source is None:
                raise ConfigurationError(
                    f"decoding={kind!r} needs draft heads trained for {self.model!r}, and none "
                    f"are bundled for it: train them with `sotflow train-heads --model "
                    f"{self.model} --questions FILE --kind {kind} -o heads.safetensors` and "
                    "pass heads='heads.safetensors'"
                )
        heads = self._load_heads(source)
        self._heads[kind] = heads
        return heads

    def _load_heads(self, source: str | os.PathLike[str] | DraftHeads) -> DraftHeads:
        from ..decoding.heads import DraftHeads, load_heads

        if isinstance(source, DraftHeads):
            return source
        try:
            return load_heads(source, self._model)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from exc

    def reset_stats(self) -> None:
        from ..decoding.batched import DecoderStats

        self.decoder.stats = DecoderStats()
        self.requests = 0

    async def aclose(self) -> None:
        """Cancel whatever is still decoding. The model stays loaded and usable: an
        engine closes its backends on exit, and a model in memory has nothing to
        reopen, so the next engine on this backend simply goes on using it."""
        for job, _ in list(self._jobs.values()):
            self._cancel(job)
