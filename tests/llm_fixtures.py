"""Tiny GGUF models the LLM, CLI and batch tests load: the gguf_fixtures model with a tokenizer the
project supports (the qwen2 pre-tokenizer) and a chat template whose conversations grow by appending."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gguf_fixtures import write_model_gguf

VOCAB = 320
END_OF_TEXT = 258  # the fixture vocabulary's <|endoftext|>: BOS, EOS and end of generation
CHAT_TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}<|endoftext|>{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def write_chat_model(path: Path, seed: int = 0, context_length: int = 256, **spec: Any) -> Path:
    """A 1-layer llama-architecture model of VOCAB tokens that the tokenizer, decoder and chat accept."""
    write_model_gguf(path, "llama", {"n_layers": 1, "vocab_size": VOCAB, "context_length": context_length, **spec},
                     seed=seed, drop_metadata=["tokenizer.ggml.pre"],
                     extra_metadata={"tokenizer.ggml.pre": "qwen2", "tokenizer.chat_template": CHAT_TEMPLATE})
    return path
