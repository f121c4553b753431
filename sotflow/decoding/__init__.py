"""Pure-torch decoding for the local backend: no anyio, no printing, statistics as data.

    model_loading   alias resolution ("smollm2"), GGUF dequantisation cache, HF loading
    forward         a lean Llama-family forward over a slot-based KV cache
    kv_cache        the preallocated, growable cache: one compact row per live sequence
    sampling        logits processors, greedy and seeded sampling, log-probabilities
    verify          token trees of candidate continuations and greedy acceptance
    prompt_lookup   candidates copied from earlier in the context
    jacobi          the previous step's own guesses as a candidate
    lookahead       the 2D Jacobi window and its n-gram pool (Fu et al., 2024)
    heads           trained draft heads (Medusa, Cerberus): proposals from hidden states
    head_training   self-distillation of draft heads on the model's own greedy output
    batched         the continuous-batching decoder that ties all of the above together
    threads         the one thread that runs all torch work (one OpenMP team per process)

Importing this package imports torch; ``sotflow`` itself never does.
"""
