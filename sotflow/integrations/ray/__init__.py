"""sotflow on a Ray cluster: answer a Ray Data dataset, with the limits shared cluster-wide.

    import ray
    from sotflow.integrations.ray import AnswerQuestions, ClusterLimits

    limits = ClusterLimits.start(max_concurrency=64, rpm=3000)   # on the driver
    answers = ray.data.read_json("questions.jsonl").map_batches(
        AnswerQuestions,
        fn_constructor_kwargs={"strategy": "sot", "backend": make_backend, "limits": limits},
        compute=ray.data.ActorPoolStrategy(size=4),  # Ray < 2.51: concurrency=4
        batch_size=16,
    )

``AnswerQuestions`` adds to each row exactly the fields ``sotflow batch`` writes;
``ClusterLimits`` is the named actor that holds the calls-in-flight, requests-per-minute
and tokens-per-minute budgets, leased to the workers in small blocks (the protocol is in
``sotflow.integrations.ray.limits``); ``WorkerPool`` is the driver's side of
``sotflow batch --ray``.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError("sotflow.integrations.ray needs Ray: pip install 'sotflow[ray]'") from exc

from .answer import AnswerQuestions
from .limits import ClusterLimits, LeasedLimiter
from .pool import WorkerPool

__all__ = ["AnswerQuestions", "ClusterLimits", "LeasedLimiter", "WorkerPool"]
