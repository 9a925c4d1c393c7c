"""Exports of a trained LoRA adapter, one module per target (``oracle-council export``).

    adapter.py    read a peft adapter folder, find its base model, check they fit together
    vllm.py       a folder vLLM's LoRA loader accepts (``--lora-modules name=path``)
    gguf_lora.py  a GGUF LoRA file llama.cpp (and so Ollama) loads over a GGUF base
    gguf_base.py  a Hugging Face Qwen2 model folder as a GGUF base model (tests, offline use)
    ollama.py     the GGUF LoRA plus a Modelfile (FROM, ADAPTER, ChatML TEMPLATE, PARAMETERs)
    merged.py     base + adapter merged into a standalone Hugging Face model folder
    atomic.py     outputs appear whole or not at all (temp folder beside the target, rename)
    errors.py     ExportError: bad input, said in words the user can act on

Nothing here imports ``gateway``; torch, transformers, peft and gguf load inside functions.
"""
