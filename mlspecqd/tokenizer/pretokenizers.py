"""Pre-tokenizers of byte-level BPE models: how text is cut into pieces before merges apply.

Each is named by the GGUF key tokenizer.ggml.pre. The patterns are the ones the models' own
tokenizers use (and llama.cpp mirrors); unknown names are refused by the caller, never guessed.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from mlspecqd.tokenizer import unicode_classes

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizer:
    name: str
    # Applied in turn: each pattern cuts every piece into its matches and the text between them.
    patterns: tuple[str, ...]
    # Qwen2's tokenizer normalizes text to NFC before anything else.
    normalize_nfc: bool = False
    # Llama 3's tokenizer takes a piece that is already a token whole, without merging.
    ignore_merges: bool = False

    def normalize(self, text: str) -> str:
        if self.normalize_nfc and not unicodedata.is_normalized("NFC", text):
            return unicodedata.normalize("NFC", text)
        return text

    def split(self, text: str) -> list[str]:
        pieces = [text]
        for splitter in _compiled(self.patterns):
            pieces = [part for piece in pieces for part in splitter.split(piece) if part]
        return pieces


@functools.cache
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    # One capturing group around the whole pattern makes re.split keep the matches as pieces.
    return tuple(re.compile(f"({unicode_classes.expand(pattern)})") for pattern in patterns)


PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "gpt2": PreTokenizer("gpt2", (_GPT2,)),
    "gpt-2": PreTokenizer("gpt-2", (_GPT2,)),
    "qwen2": PreTokenizer("qwen2", (_QWEN2,), normalize_nfc=True),
    "llama-bpe": PreTokenizer("llama-bpe", (_LLAMA3,), ignore_merges=True),
    "llama3": PreTokenizer("llama3", (_LLAMA3,), ignore_merges=True),
    "llama-v3": PreTokenizer("llama-v3", (_LLAMA3,), ignore_merges=True),
    # SmolLM (StarCoder style): every digit alone first, then the GPT-2 split within each piece.
    "smollm": PreTokenizer("smollm", (r"\p{N}", _GPT2)),
}
