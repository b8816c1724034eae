"""The tokenizer description a GGUF file carries, read from its metadata and checked.

Keys follow llama.cpp's names (tokenizer.ggml.*). Every problem is a TokenizerError naming the key.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlspecqd.gguf.format import excerpt, one_line


class TokenizerError(ValueError):
    """A tokenizer that cannot be built, or an argument it cannot handle. The message is one line: values
    from the file are quoted as short excerpts (excerpt())."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, 1000))


class TokenType(enum.IntEnum):
    """GGUF token types (the same numbers SentencePiece uses)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


SUPPORTED_MODELS = ("gpt2", "llama")

# Texts that end a turn in the chat formats in use. llama.cpp treats these as end-of-generation even
# when the file marks only one of them (Qwen's EOS is <|im_end|>, yet <|endoftext|> also ends a reply;
# Gemma files mark no end-of-turn id at all).
END_OF_TURN_TEXTS = frozenset(
    {
        "<|im_end|>",
        "<|endoftext|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end_of_text|>",
        "<|end|>",
        "<end_of_turn>",
        "<EOT>",
        "<|return|>",
    }
)

_PREFIX = "tokenizer.ggml."
# Special tokens are matched in text through a prefix tree of their characters, which takes some hundred
# bytes per character; real vocabularies hold under 100,000 characters of them (Gemma 3: 76,000).
MAX_SPECIAL_TOKEN_CHARS = 1 << 20
_MATCHED_TYPES = (TokenType.USER_DEFINED, TokenType.CONTROL, TokenType.UNKNOWN)  # what Tokenizer matches in text


@dataclass(frozen=True)
class Vocabulary:
    """Everything a Tokenizer is built from; plain values, validated."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None  # pre-tokenizer name (byte-level BPE only)
    tokens: list[str]
    token_types: list[int]
    merges: list[str]  # "left right", byte-level BPE only
    scores: list[float]  # SentencePiece only
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unknown_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    chat_template: str | None

    @property
    def size(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Vocabulary:
        model = _optional_str(metadata, "model")
        if model is None:
            raise TokenizerError(f"{_PREFIX}model: missing (no tokenizer in this file)")
        if model not in SUPPORTED_MODELS:
            raise TokenizerError(
                f"{_PREFIX}model: unsupported tokenizer model {excerpt(model)} "
                f"(supported: {', '.join(SUPPORTED_MODELS)})"
            )
        tokens = _string_list(metadata, "tokens", required=True)
        if not tokens:
            raise TokenizerError(f"{_PREFIX}tokens: empty vocabulary")
        size = len(tokens)

        raw_types = metadata.get(_PREFIX + "token_type")
        token_types = [int(TokenType.NORMAL)] * size if raw_types is None else _int_list(raw_types, "token_type")
        if len(token_types) != size:
            raise TokenizerError(f"{_PREFIX}token_type: {len(token_types)} entries for {size} tokens")
        valid_types = {int(t) for t in TokenType}
        for index, token_type in enumerate(token_types):
            if token_type not in valid_types:
                raise TokenizerError(f"{_PREFIX}token_type[{index}]: unknown token type {token_type}")

        special_chars = sum(len(text) for text, token_type in zip(tokens, token_types) if token_type in _MATCHED_TYPES)
        if special_chars > MAX_SPECIAL_TOKEN_CHARS:
            problem = f"special tokens of {special_chars} characters in all, more than {MAX_SPECIAL_TOKEN_CHARS}"
            raise TokenizerError(f"{_PREFIX}tokens: {problem}")

        merges: list[str] = []
        scores: list[float] = []
        if model == "gpt2":
            merges = _string_list(metadata, "merges", required=True)
        else:
            raw_scores = metadata.get(_PREFIX + "scores")
            if raw_scores is None:
                raise TokenizerError(f"{_PREFIX}scores: missing (a SentencePiece vocabulary needs scores)")
            try:
                scores = [float(score) for score in raw_scores]
            except (TypeError, ValueError) as error:
                raise TokenizerError(f"{_PREFIX}scores: not a list of numbers ({error})") from None
            nan = next((index for index, score in enumerate(scores) if math.isnan(score)), None)
            if nan is not None:  # SentencePiece merges by score: NaN has no order
                raise TokenizerError(f"{_PREFIX}scores[{nan}]: NaN")
            if len(scores) != size:
                raise TokenizerError(f"{_PREFIX}scores: {len(scores)} entries for {size} tokens")

        # llama.cpp's defaults when a flag is absent: SentencePiece adds BOS and a prefix space.
        is_sentencepiece = model == "llama"
        return cls(
            model=model,
            pre=_optional_str(metadata, "pre"),
            tokens=tokens,
            token_types=token_types,
            merges=merges,
            scores=scores,
            bos_id=_token_id(metadata, "bos_token_id", size),
            eos_id=_token_id(metadata, "eos_token_id", size),
            eot_id=_token_id(metadata, "eot_token_id", size),
            eom_id=_token_id(metadata, "eom_token_id", size),
            unknown_id=_token_id(metadata, "unknown_token_id", size),
            add_bos=_flag(metadata, "add_bos_token", default=is_sentencepiece),
            add_eos=_flag(metadata, "add_eos_token", default=False),
            add_space_prefix=_flag(metadata, "add_space_prefix", default=is_sentencepiece),
            chat_template=_chat_template(metadata, tokens, token_types),
        )

    def end_of_generation_ids(self) -> frozenset[int]:
        marked = {self.eos_id, self.eot_id, self.eom_id} - {None}
        special_types = (TokenType.CONTROL, TokenType.USER_DEFINED)
        by_text = {
            index
            for index, (text, token_type) in enumerate(zip(self.tokens, self.token_types))
            if token_type in special_types and text in END_OF_TURN_TEXTS
        }
        return frozenset(marked | by_text)  # type: ignore[arg-type]

    def difference(self, other: Vocabulary) -> str | None:
        """None if both encode and decode alike, else the first thing that differs."""
        for name in ("model", "pre", "add_space_prefix"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"{name} differs: {mine!r} vs {theirs!r}"
        if self.size != other.size:
            return f"vocabulary size differs: {self.size} vs {other.size}"
        for name in ("tokens", "token_types", "scores", "merges"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                if len(mine) != len(theirs):
                    return f"{name} differ: {len(mine)} vs {len(theirs)} entries"
                index = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
                return f"{name} differ first at index {index}: {mine[index]!r} vs {theirs[index]!r}"
        for name in ("bos_id", "eos_id", "unknown_id", "add_bos", "add_eos"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"{name} differs: {mine!r} vs {theirs!r}"
        mine_eog, theirs_eog = self.end_of_generation_ids(), other.end_of_generation_ids()
        if mine_eog != theirs_eog:
            return f"end-of-generation ids differ: {sorted(mine_eog)} vs {sorted(theirs_eog)}"
        return None


def _optional_str(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(_PREFIX + key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TokenizerError(f"{_PREFIX}{key}: expected a string, got {type(value).__name__}")
    return value


def _string_list(metadata: Mapping[str, Any], key: str, required: bool) -> list[str]:
    value = metadata.get(_PREFIX + key)
    if value is None:
        if required:
            raise TokenizerError(f"{_PREFIX}{key}: missing")
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TokenizerError(f"{_PREFIX}{key}: expected a list of strings, got {type(value).__name__}")
    strings = list(value)
    for index, item in enumerate(strings):
        if not isinstance(item, str):
            raise TokenizerError(f"{_PREFIX}{key}[{index}]: expected a string, got {type(item).__name__}")
    return strings


def _int_list(value: Any, key: str) -> list[int]:
    try:
        return [int(item) for item in value]
    except (TypeError, ValueError) as error:
        raise TokenizerError(f"{_PREFIX}{key}: not a list of integers ({error})") from None


def _token_id(metadata: Mapping[str, Any], key: str, size: int) -> int | None:
    value = metadata.get(_PREFIX + key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(value)  # NumPy integers
        except (TypeError, ValueError):
            raise TokenizerError(f"{_PREFIX}{key}: expected a token id, got {excerpt(value)}") from None
    if not 0 <= value < size:
        raise TokenizerError(f"{_PREFIX}{key}: {value} is out of range for a vocabulary of {size} tokens")
    return value


def _flag(metadata: Mapping[str, Any], key: str, default: bool) -> bool:
    value = metadata.get(_PREFIX + key)
    if value is None:
        return default
    if value not in (True, False, 0, 1):
        raise TokenizerError(f"{_PREFIX}{key}: expected a boolean, got {excerpt(value)}")
    return bool(value)


# Gemma's turn format, for Gemma files that carry no tokenizer.chat_template (the hub's gemma-3-270m has
# none). A system message opens the first user turn; "assistant" turns are Gemma's "model" turns: llama.cpp's
# built-in "gemma" format, with the BOS written.
GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] | trim + '\n\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)
_GEMMA_TURN_TOKENS = frozenset({"<start_of_turn>", "<end_of_turn>"})


def _chat_template(metadata: Mapping[str, Any], tokens: list[str], token_types: list[int]) -> str | None:
    """The file's template; where it has none, Gemma's turn format when both turn tokens are special."""
    value = metadata.get("tokenizer.chat_template")
    if value is not None and not isinstance(value, str):
        raise TokenizerError(f"tokenizer.chat_template: expected a string, got {type(value).__name__}")
    if value is None:
        special = {text for text, token_type in zip(tokens, token_types)
                   if token_type in (TokenType.CONTROL, TokenType.USER_DEFINED) and text in _GEMMA_TURN_TOKENS}
        if special == _GEMMA_TURN_TOKENS:
            return GEMMA_CHAT_TEMPLATE
    return value
