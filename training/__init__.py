"""Training: turn sample datasets into LoRA adapters.

- ``training.tiny``: a small Qwen2-shaped causal LM with a ChatML tokenizer, built locally (tests
  and the offline demo; no download);
- ``training.lora``: the minimal LoRA trainer (``LoRATrainConfig``, ``train_lora``);
- ``training.demo``: builds the embedded default's base model and adapters once, under
  ``$ORACLE_COUNCIL_HOME``.

This package never imports ``gateway``; torch, transformers and peft load inside functions.
"""
