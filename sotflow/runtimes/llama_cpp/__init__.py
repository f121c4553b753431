"""The llama.cpp runtime: GGUF models on the CPU through llama-cpp-python.

    runtime   ``LlamaCppRuntime``: the decoders' runtime interface over llama_decode
              and the unified key/value cache's sequence operations
    codec     prompts (the GGUF's own chat template) and text through llama.cpp's vocab
    weights   embedding and output rows read from the GGUF file, for draft heads
    testing   tiny random GGUF models for tests

Importing this package imports neither torch nor llama_cpp; the runtime imports
llama_cpp when it is made.
"""
