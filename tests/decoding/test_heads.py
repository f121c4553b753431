"""Draft heads (Medusa, Cerberus): the proposal tree, training, files, and the decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from decoding_helpers import (
    TinyModel,
    decode_all,
    decoder,
    greedy_corpus,
    hf_greedy,
    prompts,
    trained_heads,
)

from sotflow.decoding.batched import BatchDecoder, SequenceRequest, SpeculationConfig
from sotflow.decoding.head_training import (
    Corpus,
    features,
    head_vocabulary,
    prepare,
    save_heads,
    train_heads,
)
from sotflow.decoding.heads import DraftHeads, HeadsSpec, best_paths, load_heads
from sotflow.runtimes.torch.forward import DecoderModel
from sotflow.runtimes.torch.runtime import TorchRuntime
from sotflow.runtimes.torch.testing import tiny_llama


def counting_corpus(count: int = 60, length: int = 40, vocab: int = 40) -> Corpus:
    """Sequences that count up by 3 mod ``vocab``: every next token is a function of the
    current one, so heads that see the decided token can learn them exactly (a small
    alphabet: a 64-wide block can map 40 embeddings onto 40 targets)."""
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(count):
        prompt = torch.randint(0, vocab, (6,), generator=g).tolist()
        start = int(torch.randint(0, vocab, (1,), generator=g))
        items.append((prompt + [(start + 3 * i) % vocab for i in range(length)], len(prompt)))
    return Corpus.of(items)


def test_best_paths_builds_the_likeliest_tree_under_a_budget() -> None:
    probs = [[0.6, 0.3, 0.1], [0.9, 0.05, 0.05], [0.5, 0.4, 0.1]]
    words = [[10, 11, 12], [20, 21, 22], [30, 31, 32]]
    paths, scores = best_paths(probs, words, max_nodes=5)
    assert scores[0] == pytest.approx(0.6 * 0.9 * 0.5)
    # Best first: 10 (0.6), 10-20 (0.54), 10-20-30 (0.27), 11 (0.3), 11-20 (0.27) ...
    nodes = {tuple(p[: i + 1]) for p in paths for i in range(len(p))}
    assert len(nodes) == 5
    assert paths[0] == [10, 20, 30]
    assert (11,) in nodes and (12,) not in nodes
    # Every node's parent is in the tree.
    assert all(n[:-1] in nodes or len(n) == 1 for n in nodes)
    assert best_paths(probs, words, max_nodes=1) == ([[10]], [0.6])


def test_zero_initialised_heads_guess_the_decided_token_again(tiny_torch: DecoderModel) -> None:
    tiny = tiny_torch
    runtime = TorchRuntime(tiny)
    C, V = tiny.hidden_size, tiny.vocab_size
    spec = HeadsSpec("medusa", 2, C, tuple(range(V)))
    zero = [(np.zeros((C, 2 * C), np.float32), np.zeros(C, np.float32))] * 2
    heads = DraftHeads(spec, zero, [], runtime.output_rows(range(V)), runtime.embedding_rows)
    hidden = np.random.default_rng(0).standard_normal((3, C)).astype(np.float32)
    logits = heads.scores(hidden, [1, 2, 3])  # [N, K, V']
    assert logits.shape == (3, 2, V)
    with torch.inference_mode():
        expected = tiny.logits(torch.from_numpy(hidden)).argmax(-1).numpy()
    assert (logits.argmax(-1) == expected[:, None]).all()


def test_training_learns_a_learnable_pattern_and_keeps_a_held_out_part(
    tiny: TinyModel,
) -> None:
    corpus = counting_corpus()
    train, held = corpus.split(0.1)
    assert len(held.sequences) == 6 and len(train.sequences) == 54
    runtime = tiny.runtime()
    heads, report = train_heads(runtime, corpus, kind="cerberus", epochs=12, lr=1e-2, batch_size=64)
    top1 = report["held_out"]["top1"]
    assert len(top1) == 3
    assert min(top1) > 0.9, report["history"]
    assert report["history"][0]["top1"][0] < top1[0]  # it learned, from the zero start
    assert report["held_out_positions"] == 6 * 40  # the last prompt token onwards
    assert heads.spec.head_vocab == head_vocabulary(train, 8192)
    # The proposals follow the pattern: after token x come x + 3, x + 6, x + 9.
    data = features(runtime, held, heads.spec.head_vocab, 3)
    x = int(data.tokens[5])
    ((paths, _),) = heads.propose(data.hidden[5:6].numpy(), [x], max_nodes=3)
    assert paths[0] == [(x + 3 * k) % 40 for k in (1, 2, 3)]


def test_without_the_decided_token_the_heads_cannot_learn_it(tiny: TinyModel) -> None:
    # The hidden states of counting sequences under a random model carry the token only
    # weakly; the measured gap is what ``sees_token`` is for.
    corpus = counting_corpus()
    runtime = tiny.runtime()
    _, blind = train_heads(runtime, corpus, sees_token=False, epochs=6, lr=1e-2, batch_size=64)
    _, seeing = train_heads(runtime, corpus, sees_token=True, epochs=6, lr=1e-2, batch_size=64)
    assert blind["held_out"]["top1"][0] < seeing["held_out"]["top1"][0]


def test_a_saved_file_loads_back_and_checks_its_model(tiny: TinyModel, tmp_path: Path) -> None:
    runtime = tiny.runtime()
    heads, report = train_heads(runtime, counting_corpus(20), kind="cerberus", epochs=2)
    path = tmp_path / "heads.safetensors"
    save_heads(heads, path)
    loaded = load_heads(path, runtime)
    assert loaded.spec == heads.spec
    assert loaded.info["held_out"] == report["held_out"]
    h = np.random.default_rng(1).standard_normal((2, tiny.hidden_size)).astype(np.float32)
    # Saved in float16: equal to that precision.
    np.testing.assert_allclose(loaded.scores(h, [1, 2]), heads.scores(h, [1, 2]), atol=2e-2)
    assert load_heads(path, runtime, entropy_gate=None).spec.entropy_gate is None

    other = TorchRuntime(DecoderModel(tiny_llama(seed=5)))
    with pytest.raises(ValueError, match=r"trained for another model.*train-heads"):
        load_heads(path, other)
    with pytest.raises(FileNotFoundError, match="train-heads"):
        load_heads(tmp_path / "missing.safetensors", runtime)
    junk = tmp_path / "junk.safetensors"
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(1, np.float32)}, str(junk))
    with pytest.raises(ValueError, match="not a sotflow draft-heads file"):
        load_heads(junk, runtime)


@pytest.mark.parametrize("kind", ["medusa", "cerberus"])
def test_heads_decoding_is_exact_and_uses_the_heads(tiny_varied: TinyModel, kind: str) -> None:
    heads = trained_heads(tiny_varied, kind)
    ps = prompts(5, seed=21)
    dec = decoder(tiny_varied, kind)
    got, _ = decode_all(dec, [SequenceRequest(p, 40) for p in ps])
    assert got == [hf_greedy(tiny_varied, p, 40) for p in ps]
    assert dec.heads is heads
    # Rows carried head proposals into their blocks (the tree was more than the root).
    assert dec.stats.step_tokens > dec.stats.row_steps


def test_the_entropy_gate_stops_proposals(tiny_varied: TinyModel) -> None:
    heads = trained_heads(tiny_varied, "cerberus")
    shut = DraftHeads(
        HeadsSpec("cerberus", 3, heads.spec.hidden_size, heads.spec.head_vocab, entropy_gate=0.0),
        [(w.T, b) for w, b in heads.blocks],
        [u.T for u in heads.links],
        heads.projection_t.T,
        heads.embed,
    )
    ps = prompts(4, seed=22)
    requests = [SequenceRequest(p, 30) for p in ps]
    gated = BatchDecoder(
        tiny_varied.runtime(), speculation=SpeculationConfig(mode="cerberus"), heads=shut
    )
    lookup = decoder(tiny_varied, "prompt_lookup")
    got, _ = decode_all(gated, requests)
    want, _ = decode_all(lookup, requests)
    assert got == want
    # With every row gated, the blocks are exactly prompt lookup's.
    assert gated.stats.step_tokens == lookup.stats.step_tokens


def test_heads_mode_without_heads_says_how_to_get_them(tiny: TinyModel) -> None:
    with pytest.raises(ValueError, match="train-heads"):
        BatchDecoder(tiny.runtime(), speculation=SpeculationConfig(mode="medusa"))
    with pytest.raises(ValueError, match="decoding='cerberus'"):
        BatchDecoder(
            tiny.runtime(),
            speculation=SpeculationConfig(mode="medusa"),
            heads=trained_heads(tiny, "cerberus"),
        )


def test_the_corpus_records_what_the_decoder_produced(tiny: TinyModel) -> None:
    corpus = greedy_corpus(tiny, count=3, n=10)
    assert len(corpus.sequences) == 3
    for tokens, n in corpus.sequences:
        assert list(tokens[n:]) == hf_greedy(tiny, list(tokens[:n]), 10)


def test_prepared_features_train_the_same_heads_as_the_corpus(tiny: TinyModel) -> None:
    corpus = counting_corpus(20)
    runtime = tiny.runtime()
    _, direct = train_heads(runtime, corpus, epochs=2, batch_size=64)
    prepared = prepare(runtime, corpus)
    _, first = train_heads(runtime, prepared, epochs=2, batch_size=64)
    _, again = train_heads(runtime, prepared, kind="cerberus", epochs=2, batch_size=64)
    assert first["held_out"] == direct["held_out"]
    assert first["sequences"] == 20 and first["generated_tokens"] == corpus.generated_tokens
    assert (
        again["kind"] == "cerberus" and again["held_out_positions"] == first["held_out_positions"]
    )
