"""The local backend: a model in-process, decoded in one batch, on llama.cpp or torch.

Every request in flight is a row of one ``BatchDecoder`` (continuous batching): the
engine's concurrency is what fills the batch. Whichever waiting request finds nothing
new for itself takes the step lock and has one decoder step run on the process's model
thread (``sotflow.decoding.threads``); the step hands every row its tokens, so all other
waiters wake up with news. When the last waiter leaves, stepping stops.

The runtime (``sotflow.runtimes``) is llama.cpp for GGUF files on the CPU (the bundled
``smollm2`` included) and torch for GPUs and Hugging Face folders; ``runtime=`` chooses.
What a block of k tokens costs on this machine is measured once per model and setting
(cached on disk) and decides how much the decoders speculate (``decoding.costs``).

Cancelling a waiting task cancels its rows, which leave the batch at the next step
boundary. A request that fails on its own (its sampling, say) fails alone; a failure
of the whole step fails every request in the batch with a ``LocalModelError`` and
resets the decoder, so nothing hangs.

Greedy rows decode several tokens per step where the decoding mode finds candidates
and the machine's block costs make it pay (``plain``, ``prompt_lookup``, ``jacobi``,
``lookahead``, ``hybrid``, and the trained heads ``medusa``/``cerberus``, bundled for
SmolLM2); the output is always exactly the runtime's plain greedy. ``stats`` returns
the decoder's counters as data.

torch and llama.cpp are imported when a backend is made, never by ``import sotflow``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..decoding.threads import on_model_thread
from ..errors import BackendError, BadRequestError, ConfigurationError
from ..limits import Limiter
from ..types import Choice, Completion, Delta, Request, TokenLogprob, Usage
from .base import (
    PARALLEL_CALLS,
    BaseBackend,
    Capabilities,
    ServerProfile,
    StreamItem,
    check_text_request,
)

if TYPE_CHECKING:
    from ..decoding.batched import BatchDecoder, SequenceUpdate, SpeculationConfig
    from ..decoding.costs import BlockCosts
    from ..decoding.heads import DraftHeads
    from ..decoding.sampling import SamplingConfig
    from ..runtimes import LoadedRuntime
    from ..runtimes.codec import TextDecoder

__all__ = ["DEFAULT_MAX_TOKENS", "LocalBackend", "LocalModelError"]

HEADS_MODE = "cerberus"
"""The decoding mode for models with bundled heads (``decoding/weights``): the heads
propose, the measured block costs decide how much of it to verify."""

DEFAULT_MAX_TOKENS = 1024
"""Completion length when a request sets no ``max_tokens`` (the context still caps it)."""


class LocalModelError(BackendError):
    """The local model failed while decoding (a runtime error, out of memory, ...)."""


@dataclass(slots=True)
class _ChoiceState:
    seq_id: int
    decoder: TextDecoder
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    """Decoded text so far, cut at a stop string once one is seen."""
    sent: int = 0
    """Characters of ``text`` already streamed."""
    finish: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    """Where each logprob's token ends in ``text``: it streams with the text up to there."""
    logprobs_sent: int = 0


class _Job:
    """One request: ``n`` rows of the decoder and what they produced so far."""

    def __init__(
        self,
        prompt_len: int,
        choices: list[_ChoiceState],
        stops: tuple[str, ...],
        logprobs: bool,
    ) -> None:
        self.prompt_len = prompt_len
        self.choices = choices
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
                    logprobs = None
                    if self.want_logprobs:
                        first = choice.logprobs_sent
                        last = len(choice.logprobs) if choice.finish else first
                        while last < len(choice.ends) and choice.ends[last] <= ready:
                            last += 1
                        logprobs = tuple(choice.logprobs[first:last])
                        choice.logprobs_sent = last
                    out.append(Delta(choice.text[choice.sent : ready], index, logprobs))
                    choice.sent = ready
            return out


def _start(ends: list[int], i: int) -> int:
    return ends[i - 1] if i else 0


class _LoopState:
    """anyio primitives belong to one event loop; a sync wrapper may start another."""

    __slots__ = ("lock", "token")

    def __init__(self, token: object) -> None:
        self.token = token
        self.lock = anyio.Lock()


# In this process SoT pays for its skeleton (one row, decoded first), the points'
# prompts (prefilled) and the more tokens it writes in all out of the batch's gain
# alone, so it needs more of it than a server's free concurrency: measured on
# SmolLM2, gain 1.66 (llama.cpp, 2 cores) gave SoT 0.62x a direct answer's speed,
# gain ~3.5 (torch float32, same machine) 1.72x.
LOCAL_SOT_MIN_GAIN = 2.5


def parallel_gain(costs: BlockCosts, calls: int, speculating: bool) -> tuple[float, int, int]:
    """Throughput of ``calls`` greedy rows over one row's, planned as the decoder plans
    a step (``decoding.costs.plan``); with the tokens each evaluates a step."""
    from ..decoding.costs import typical_plan

    single, one = typical_plan(1, costs, speculating)
    batched, many = typical_plan(calls, costs, speculating)
    return (batched / single if single > 0 else 1.0), one, many


class LocalBackend(BaseBackend):
    """A model running in this process (see the module docstring).

    ``model``: an alias (``"smollm2"``), a ``.gguf`` file, a Hugging Face folder.
    ``runtime``: ``"auto"`` (llama.cpp for GGUF on the CPU, else torch), ``"llama.cpp"``
    or ``"torch"``. ``threads``: CPU threads (default: the machine's cores, up to 8).
    ``context``: llama.cpp's cache cells shared by all requests (default 4096, or the
    model's training context if shorter). ``block_costs``: ``"measure"`` what blocks of
    tokens cost here (once per model and machine, cached) and speculate only as far as
    that pays; ``"flat"`` to treat every block as free (full speculation, as on a GPU);
    or a ``decoding.costs.BlockCosts``.
    """

    name = "local"
    capabilities = Capabilities(prefill=True, logprobs=True, n=True)

    def __init__(
        self,
        model: str = "smollm2",
        *,
        runtime: str = "auto",
        device: str = "auto",
        dtype: Any = None,
        threads: int | None = None,
        context: int | None = None,
        max_concurrency: int | None = 64,
        max_batch_size: int = 16,
        decoding: str | SpeculationConfig | None = None,
        heads: str | os.PathLike[str] | DraftHeads | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        block_costs: BlockCosts | str = "measure",
        rpm: int | None = None,
        tpm: int | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        from ..runtimes import open_model

        if max_batch_size < 1:
            raise ConfigurationError(f"max_batch_size must be at least 1, got {max_batch_size}")
        # Loaded on the model thread, like every step later (see threads.py).
        loaded = on_model_thread(
            lambda: open_model(
                model,
                runtime=runtime,
                device=device,
                dtype=dtype,
                threads=threads,
                context=context,
                max_sequences=max_batch_size + 1,
            )
        )
        self._init(loaded, max_batch_size, decoding, heads, default_max_tokens, block_costs)
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
        block_costs: BlockCosts | str = "measure",
        limiter: Limiter | None = None,
    ) -> LocalBackend:
        """Wrap an already loaded ``transformers`` causal LM and its tokenizer (torch)."""
        from ..runtimes import torch_runtime

        loaded = on_model_thread(
            lambda: torch_runtime(hf_model, tokenizer, name=name, max_sequences=max_batch_size + 1)
        )
        return cls.from_runtime(
            loaded,
            max_concurrency=max_concurrency,
            max_batch_size=max_batch_size,
            decoding=decoding,
            heads=heads,
            default_max_tokens=default_max_tokens,
            block_costs=block_costs,
            limiter=limiter,
        )

    @classmethod
    def from_runtime(
        cls,
        loaded: LoadedRuntime,
        *,
        max_concurrency: int | None = 64,
        max_batch_size: int = 16,
        decoding: str | SpeculationConfig | None = None,
        heads: str | os.PathLike[str] | DraftHeads | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        block_costs: BlockCosts | str = "measure",
        limiter: Limiter | None = None,
    ) -> LocalBackend:
        """A backend over a runtime already loaded (``sotflow.runtimes.open_model``)."""
        backend = cls.__new__(cls)
        backend._init(loaded, max_batch_size, decoding, heads, default_max_tokens, block_costs)
        BaseBackend.__init__(backend, max_concurrency=max_concurrency, limiter=limiter)
        return backend

    def _init(
        self,
        loaded: LoadedRuntime,
        max_batch_size: int,
        decoding: str | SpeculationConfig | None,
        heads: str | os.PathLike[str] | DraftHeads | None,
        default_max_tokens: int,
        block_costs: BlockCosts | str,
    ) -> None:
        from ..decoding.costs import BlockCosts

        if isinstance(block_costs, str) and block_costs not in ("measure", "flat"):
            raise ConfigurationError(
                f"block_costs must be 'measure', 'flat' or a BlockCosts, got {block_costs!r}"
            )
        self.loaded = loaded
        self.runtime = loaded.runtime
        self.codec = loaded.codec
        self.hf_model = loaded.hf_model
        self.model = loaded.name
        self.default_max_tokens = default_max_tokens
        self._heads_source = heads
        self._heads: dict[str, DraftHeads] = {}
        self._jobs: dict[int, tuple[_Job, int]] = {}
        self._step_lock = threading.Lock()
        self._state: _LoopState | None = None
        self.requests = 0
        if block_costs == "measure":
            self.costs: BlockCosts = on_model_thread(lambda: self._measure(max_batch_size))
        else:
            self.costs = BlockCosts.flat() if block_costs == "flat" else block_costs  # type: ignore[assignment]
        self.decoder: BatchDecoder = on_model_thread(
            lambda: self._new_decoder(decoding, max_batch_size)
        )

    def _measure(self, max_batch_size: int) -> BlockCosts:
        from ..decoding.costs import cached_costs
        from ..runtimes.sources import cache_root

        # One sequence id past the decoder's: the measurement never touches a live row.
        return cached_costs(self.runtime, cache_root() / "costs", seq=max_batch_size)

    async def profile(self) -> ServerProfile:
        """What this backend does, known without a call: its parallel gain is the
        decoder's throughput with ``PARALLEL_CALLS`` greedy rows against one row, from the
        measured block costs (refined by every step) and the tokens a row's default
        decoding evaluates a step. Near 1 on a small CPU, where SoT's batched points then
        buy nothing and ``auto`` answers directly."""
        if self.known_profile is not None:
            return self.known_profile
        calls = min(PARALLEL_CALLS, self.decoder.max_batch_size)
        speculating = self.default_mode() in ("medusa", "cerberus")
        gain, one, many = parallel_gain(self.costs, calls, speculating)
        return ServerProfile(
            parallel_gain=round(gain, 2),
            prefill=True,
            n=True,
            streamed_usage=True,
            source="declared",
            probe_calls=calls,
            sot_min_gain=LOCAL_SOT_MIN_GAIN,
            notes=(
                f"a step of one row evaluates {one} token(s), of {calls} rows {many}; "
                f"that costs {self.costs(many) / self.costs(one):.2f}x here",
            ),
        )

    # ------------------------------------------------------------------ prompts
    def encode(self, request: Request) -> list[int]:
        """The prompt's token ids: the chat template, continuing ``request.prefill`` if set."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return self.codec.prompt(messages, request.prefill)

    def estimate_tokens(self, request: Request) -> int:
        try:
            prompt = len(self.encode(request))
        except Exception:
            return super().estimate_tokens(request)
        return prompt + request.params.n * (request.params.max_tokens or self.default_max_tokens)

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
        limit = self.runtime.info.context_length
        if len(prompt) >= limit:
            raise BadRequestError(
                f"the prompt has {len(prompt)} tokens but the model's context is {limit}; "
                f"shorten the messages",
                status_code=400,
                code="context_length_exceeded",
            )
        max_new = p.max_tokens or self.default_max_tokens
        top = (p.top_logprobs or 0) if p.logprobs else None
        choices = []
        for index in range(p.n):
            seq_id = self.decoder.submit(
                SequenceRequest(
                    prompt, max_new, self._sampling(request, index), self.codec.eos, top
                )
            )
            choices.append(_ChoiceState(seq_id, self.codec.decoder(prompt)))
        job = _Job(len(prompt), choices, p.stop, p.logprobs)
        with self._step_lock:
            for index, choice in enumerate(choices):
                self._jobs[choice.seq_id] = (job, index)
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
            if update.error is not None:
                job.error = LocalModelError(
                    f"the local model failed on this request: {update.error}"
                )
                job.news = True
                self._jobs.pop(update.seq_id, None)
                return
            choice.tokens.extend(update.tokens)
            if job.want_logprobs and update.logprobs:
                # Token by token, to know where each token's text ends.
                for token, item in zip(update.tokens, self._logprobs(update.logprobs), strict=True):
                    text = choice.decoder.feed((token,))
                    choice.logprobs.append(item)
                    choice.ends.append(len(text))
            else:
                text = choice.decoder.feed(update.tokens)
            finish = update.finish_reason
            cut = self._find_stop(text, job.stops, len(choice.text) - job.hold)
            if cut is not None:
                text, finish = text[:cut], "stop"
                if update.finish_reason is None:
                    self.decoder.cancel(update.seq_id)
                # The tokens from the stop string on were not returned: neither are
                # their log-probabilities (a token across the cut was, in part).
                kept = sum(1 for i in range(len(choice.ends)) if _start(choice.ends, i) < cut)
                del choice.logprobs[kept:], choice.ends[kept:]
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
        text = self.codec.token_text
        return [
            TokenLogprob(
                text(item.token),
                item.logprob,
                tuple((text(t), lp) for t, lp in item.top),
            )
            for item in items
        ]

    def _step_sync(self) -> None:
        """Run one decoder step (on the model thread) and hand every job its news."""
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
            # The step runs on the process's one model thread; an anyio worker waits for it.
            await anyio.to_thread.run_sync(on_model_thread, self._step_sync)

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
        out["runtime"] = self.runtime.info.name
        out["block_costs"] = self.costs.as_dict()
        return out

    def set_decoding(self, decoding: str | SpeculationConfig | None) -> None:
        """Switch the decoding mode (only while idle); the model and its cache stay."""
        if self.decoder.has_work:
            raise BackendError("cannot switch the decoding mode while requests are running")
        self.decoder = on_model_thread(
            lambda: self._new_decoder(decoding, self.decoder.max_batch_size)
        )

    def _new_decoder(
        self, decoding: str | SpeculationConfig | None, max_batch_size: int
    ) -> BatchDecoder:
        from ..decoding.batched import BatchDecoder, SpeculationConfig

        if decoding is None:
            decoding = self.default_mode()
        if isinstance(decoding, str):
            try:
                decoding = SpeculationConfig(mode=decoding)  # type: ignore[arg-type]
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from exc
        heads = self._draft_heads(decoding.mode) if decoding.uses_heads else None
        try:  # the decoder checks that the heads' kind is the mode's
            return BatchDecoder(
                self.runtime,
                max_batch_size=max_batch_size,
                speculation=decoding,
                heads=heads,
                costs=self.costs,
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc

    def default_mode(self) -> str:
        """Heads given without a mode decode as their kind says; a model with bundled
        heads gets ``HEADS_MODE``; anything else prompt lookup."""
        from ..decoding.heads import bundled_heads

        if self._heads_source is not None:
            heads = self._load_heads(self._heads_source)
            self._heads.setdefault(heads.kind, heads)
            return heads.kind
        if bundled_heads(self.model, HEADS_MODE) is not None:
            return HEADS_MODE
        return "prompt_lookup"

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
            return load_heads(source, self.runtime)
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
