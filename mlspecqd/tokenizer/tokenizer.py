"""Tokenizer: text <-> token ids for a GGUF model, built from the file's metadata alone."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlspecqd.gguf import open_gguf
from mlspecqd.gguf.format import excerpt
from mlspecqd.tokenizer.byte_level_bpe import ByteLevelBPE
from mlspecqd.tokenizer.sentencepiece_bpe import SentencePieceBPE
from mlspecqd.tokenizer.special_tokens import SpecialTokenSplitter
from mlspecqd.tokenizer.stream import StreamDecoder
from mlspecqd.tokenizer.vocabulary import TokenizerError, TokenType, Vocabulary

# Token types that stand for markers, not text: dropped by decode(skip_special=True).
_SPECIAL_TYPES = frozenset({TokenType.CONTROL, TokenType.UNKNOWN, TokenType.UNUSED})


class Tokenizer:
    """Byte-level BPE or SentencePiece tokenizer, as the GGUF's tokenizer.ggml.model says."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self._model = ByteLevelBPE(vocabulary) if vocabulary.model == "gpt2" else SentencePieceBPE(vocabulary)
        self._token_bytes = self._model.token_bytes_table
        self._is_special = [token_type in _SPECIAL_TYPES for token_type in vocabulary.token_types]
        # SentencePiece writes a space before the text (its "dummy prefix") and removes it on decode.
        self._space_prefix = vocabulary.model == "llama" and vocabulary.add_space_prefix
        self.bos_id: int | None = vocabulary.bos_id
        self.eos_id: int | None = vocabulary.eos_id
        self.add_bos: bool = vocabulary.add_bos
        self.add_eos: bool = vocabulary.add_eos
        if self.add_bos and self.bos_id is None:
            raise TokenizerError("tokenizer.ggml.add_bos_token: set, but tokenizer.ggml.bos_token_id is missing")
        if self.add_eos and self.eos_id is None:
            raise TokenizerError("tokenizer.ggml.add_eos_token: set, but tokenizer.ggml.eos_token_id is missing")
        self.end_of_generation_ids: frozenset[int] = vocabulary.end_of_generation_ids()
        self.chat_template: str | None = vocabulary.chat_template
        # User-defined tokens are always matched whole in text (llama.cpp and SentencePiece agree);
        # control tokens only when the caller asks for special tokens to be parsed.
        user_defined = self._ids_by_text({TokenType.USER_DEFINED})
        self._plain_splitter = SpecialTokenSplitter(user_defined)
        self._special_splitter: SpecialTokenSplitter | None = None  # built on first use: can be large

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        return cls(Vocabulary.from_gguf_metadata(metadata))

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        with open_gguf(path) as file:
            metadata = file.metadata
        try:
            return cls.from_gguf_metadata(metadata)
        except TokenizerError as error:
            raise TokenizerError(f"{path}: {error}") from None

    @property
    def vocab_size(self) -> int:
        return self.vocabulary.size

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for text. add_special: add BOS/EOS as the file asks. parse_special: turn the
        text of control tokens (e.g. <|im_start|>) into those tokens, as chat prompts need."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode: text must be a str, got {type(text).__name__}")
        _check_encodable(text)
        ids: list[int] = []
        if add_special and self.add_bos:
            ids.append(self.bos_id)  # type: ignore[arg-type]
        if text and self._space_prefix:
            text = " " + text  # before the whole text, even one that starts with a special token
        splitter = self._special_token_splitter() if parse_special else self._plain_splitter
        for part in splitter.split(text):
            ids.extend(self._model.encode_text(part) if isinstance(part, str) else (part,))
        if add_special and self.add_eos:
            ids.append(self.eos_id)  # type: ignore[arg-type]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text for token ids; bytes that are not valid UTF-8 become U+FFFD."""
        parts = []
        at_text_start = True
        for token_id in ids:
            data, is_text = self._piece(token_id, skip_special, at_text_start)
            at_text_start = at_text_start and not is_text
            parts.append(data)
        return b"".join(parts).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (the literal text of a special token)."""
        return self._token_bytes[self._check_id(token_id)]

    def stream_decoder(self, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(lambda token_id, at_text_start: self._piece(token_id, skip_special, at_text_start))

    def is_end_of_generation(self, token_id: int) -> bool:
        return token_id in self.end_of_generation_ids

    def same_vocabulary(self, other: Tokenizer) -> str | None:
        """None if both tokenizers map text to the same ids and back; else what differs."""
        return self.vocabulary.difference(other.vocabulary)

    def special_token_texts(self) -> dict[str, str]:
        """bos_token / eos_token texts, as chat templates expect them."""
        texts = {}
        for name, token_id in (("bos_token", self.bos_id), ("eos_token", self.eos_id)):
            if token_id is not None:
                texts[name] = self.vocabulary.tokens[token_id]
        return texts

    def _piece(self, token_id: int, skip_special: bool, at_text_start: bool) -> tuple[bytes, bool]:
        token_id = self._check_id(token_id)
        if self._is_special[token_id]:
            return (b"" if skip_special else self._token_bytes[token_id]), False
        data = self._token_bytes[token_id]
        if at_text_start and self._space_prefix and data.startswith(b" "):
            data = data[1:]
        return data, True

    def _check_id(self, token_id: int) -> int:
        try:
            token_id = operator.index(token_id)  # ints and NumPy integers, not floats
        except TypeError:
            raise TokenizerError(f"token id {excerpt(token_id)} is not an integer") from None
        if not 0 <= token_id < self.vocabulary.size:
            size = self.vocabulary.size
            raise TokenizerError(f"token id {token_id} is out of range for a vocabulary of {size} tokens")
        return token_id

    def _ids_by_text(self, token_types: set[TokenType]) -> dict[str, int]:
        return {
            text: index
            for index, (text, token_type) in enumerate(zip(self.vocabulary.tokens, self.vocabulary.token_types))
            if token_type in token_types
        }

    def _special_token_splitter(self) -> SpecialTokenSplitter:
        if self._special_splitter is None:
            self._special_splitter = SpecialTokenSplitter(
                self._ids_by_text({TokenType.USER_DEFINED, TokenType.CONTROL, TokenType.UNKNOWN})
            )
        return self._special_splitter


def _check_encodable(text: str) -> None:
    """A TokenizerError for text that is not Unicode a tokenizer can take: a lone surrogate (from JSON's
    "\\ud800" or an undecodable command-line argument) has no UTF-8 bytes, so no token spells it."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TokenizerError(f"encode: text holds a lone surrogate {text[error.start]!r} at character {error.start}, "
                             "which is not valid Unicode") from None
