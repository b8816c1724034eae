"""Tiny GGUF models the LLM, CLI and batch tests load: the gguf_fixtures model with a tokenizer the
project supports (the qwen2 pre-tokenizer) and a chat template whose conversations grow by appending."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.gguf_fixtures import write_model_gguf

VOCAB = 320
END_OF_TEXT = 258  # the fixture vocabulary's <|endoftext|>: BOS, EOS and end of generation
CHAT_TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}<|endoftext|>{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def write_chat_model(path: Path, spec: dict[str, Any] | None = None, architecture: str = "llama",
                     **options: Any) -> Path:
    """A 1-layer model of VOCAB tokens (256 positions; llama unless `architecture` says otherwise) that the
    tokenizer, decoder and chat accept; `spec` overrides sizes, `options` go to write_model_gguf (seed,
    tensors, ...)."""
    write_model_gguf(path, architecture, {"n_layers": 1, "vocab_size": VOCAB, **(spec or {})},
                     drop_metadata=["tokenizer.ggml.pre"],
                     extra_metadata={"tokenizer.ggml.pre": "qwen2", "tokenizer.chat_template": CHAT_TEMPLATE},
                     **options)
    return path
