"""A tiny Qwen2-shaped causal LM built locally, for tests and the offline demo.

``build_tiny_base(out_dir, corpus)`` trains a byte-level BPE tokenizer on ``corpus``, wraps it
with ChatML special tokens and chat template, initialises a small ``Qwen2ForCausalLM`` from a
seed, and saves both as a standard Hugging Face model folder (safetensors, tokenizer files,
generation config), loadable by ``AutoModelForCausalLM`` / ``AutoTokenizer`` and by vLLM.

The weights are random: the model is a base for LoRA adapters, not a language model. Two choices
make LoRA training work on it: ``initializer_range=0.2`` (with the usual 0.02, tied embeddings and
RMSNorm cap the logits and training stalls) and ``head_dim >= 32`` (vLLM's CPU attention rejects
smaller heads).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]

# Qwen2's pre-tokenisation: letters, single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# ChatML, as Qwen2.5 uses it, without a default system prompt.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def build_tiny_base(out_dir: str | Path, corpus: Iterable[str], *, seed: int = 0, hidden: int = 256,
                    layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int | None = None,
                    vocab_size: int = 2048, max_position_embeddings: int = 2048) -> Path:
    """Build and save the tiny model in ``out_dir``; the same corpus and seed give the same files.

    ``vocab_size`` is an upper bound: a small corpus yields fewer merges. ``intermediate``
    defaults to twice ``hidden``.
    """
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden ({hidden}) must divide by heads ({heads}) and heads by kv_heads ({kv_heads})")
    if hidden // heads < 32:
        raise ValueError(f"head_dim {hidden // heads} < 32: vLLM's CPU attention rejects it; use fewer heads")

    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(corpus, vocab_size, max_position_embeddings)
    tokenizer.save_pretrained(out)

    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    pad = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=pad,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=im_end, pad_token_id=pad)
    model.save_pretrained(out)
    return out


def _train_tokenizer(corpus: Iterable[str], vocab_size: int, max_length: int):
    """A byte-level BPE wrapped as a fast HF tokenizer.

    The normaliser and pre-tokeniser are Qwen2's: ``AutoTokenizer`` loads any ``qwen2`` model's
    tokenizer as ``Qwen2Tokenizer``, which installs them whatever the file says, so training the
    merges under the same ones keeps tokenisation identical in every loader (ours, vLLM's).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )
