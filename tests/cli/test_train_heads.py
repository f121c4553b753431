"""``sotflow train-heads`` end to end on a tiny model saved as a Hugging Face folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sotflow.decoding.heads import load_heads
from sotflow.runtimes.torch.forward import DecoderModel
from sotflow.runtimes.torch.runtime import TorchRuntime
from sotflow.runtimes.torch.testing import byte_tokenizer, tiny_llama

from .conftest import Runner, clean_env


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = byte_tokenizer()
    # Byte-level prompts are long: SoT's skeleton prompt needs more than 512 positions.
    model = tiny_llama(seed=2, eos_token_id=tokenizer.eos_token_id, max_positions=2048)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_train_heads_records_a_corpus_trains_and_reuses_it(
    cli: Runner, tiny_folder: Path, tmp_path: Path
) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("What is a cat?\nName two rivers.\n")
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "heads.safetensors"
    common = ["--model", str(tiny_folder), "--device", "cpu", "--epochs", "2"]
    result = cli(
        "train-heads", *common, "--questions", str(questions), "--direct-max-tokens", "16",
        "--corpus", str(corpus), "-o", str(out),
        env_override=clean_env(), timeout=240,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "recording the model's answers to 2 questions" in result.stderr
    assert "direct: 2 answers, 0 failed" in result.stderr
    assert "sot: 2 answers, 0 failed" in result.stderr
    header, *rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert header["record"]["questions"] == 2
    # At least each direct answer; SoT adds its skeleton (and points or a fallback).
    assert len(rows) >= 4
    assert all(len(r["tokens"]) > r["prompt_len"] for r in rows)

    from transformers import AutoModelForCausalLM

    model = TorchRuntime(DecoderModel(AutoModelForCausalLM.from_pretrained(tiny_folder)))
    heads = load_heads(out, model)
    assert heads.kind == "medusa" and heads.spec.num_heads == 3
    assert heads.info["data"]["questions_file"] == "questions.txt"
    assert heads.info["sequences"] == len(rows)

    again = cli(
        "train-heads", *common, "--corpus", str(corpus), "--kind", "cerberus", "--heads", "2",
        "-o", str(tmp_path / "cerberus.safetensors"),
        env_override=clean_env(), timeout=240,
    )  # fmt: skip
    assert again.code == 0, again.stderr
    assert f"read {len(rows)} sequences from" in again.stderr
    assert "recording" not in again.stderr
    cerberus = load_heads(tmp_path / "cerberus.safetensors", model)
    assert cerberus.kind == "cerberus" and cerberus.spec.num_heads == 2
    # A reused corpus still knows which questions it came from.
    assert cerberus.info["data"]["questions_file"] == "questions.txt"


def test_train_heads_usage_errors(cli: Runner, tmp_path: Path) -> None:
    missing = cli("train-heads", "-o", str(tmp_path / "x.safetensors"), env_override=clean_env())
    assert missing.code == 2
    assert "pass --questions FILE" in missing.stderr and "Traceback" not in missing.stderr

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"tokens": [1, 2, 3], "prompt_len": 1}\nnot json\n')
    bad = cli(
        "train-heads", "--corpus", str(broken), "-o", str(tmp_path / "x.safetensors"),
        "--model", "/nowhere/model", env_override=clean_env(),
    )  # fmt: skip
    assert bad.code == 2
    assert "line 2 is not a corpus record" in bad.stderr and "Traceback" not in bad.stderr
