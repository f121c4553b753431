"""The torch runtime: GPUs, Hugging Face folders, and the exact reference.

    forward    a lean Llama-family forward over a row-per-sequence KV cache
    kv_cache   the preallocated, growable cache
    runtime    ``TorchRuntime``: the decoders' runtime interface over the two above
    loading    Hugging Face / GGUF loading, and the dequantised-GGUF cache
    codec      prompts and text through a Hugging Face tokenizer
    testing    tiny random models and a byte-level tokenizer for tests

Importing this package imports torch.
"""
