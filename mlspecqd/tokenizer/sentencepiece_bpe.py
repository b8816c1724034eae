"""SentencePiece BPE (GGUF tokenizer model "llama"): Llama 1/2, Gemma vocabularies.

Encoding is done by the `sentencepiece` library itself, so it is exact by construction: we rebuild
the model file (a small protobuf) from the GGUF vocabulary, scores and token types, and load it.
Decoding is ours: "▁" stands for a space and <0xNN> tokens for single bytes.
"""

from __future__ import annotations

import re
import struct

import sentencepiece

from mlspecqd.gguf.format import excerpt
from mlspecqd.tokenizer.vocabulary import TokenizerError, TokenType, Vocabulary

SPACE_MARK = "\u2581"  # "▁", SentencePiece's spelling of a space
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_LITERAL_TYPES = (TokenType.CONTROL, TokenType.UNKNOWN)
_BPE_MODEL_TYPE = 2


class SentencePieceBPE:
    """Encodes text without special tokens; decodes any token to its bytes."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        if vocabulary.pre not in (None, "default"):
            raise TokenizerError(
                f"tokenizer.ggml.pre: unsupported pre-tokenizer {excerpt(vocabulary.pre)} for a SentencePiece "
                "vocabulary (supported: 'default')"
            )
        self.token_bytes_table = [
            _token_bytes(index, text, token_type)
            for index, (text, token_type) in enumerate(zip(vocabulary.tokens, vocabulary.token_types))
        ]
        self._processor = sentencepiece.SentencePieceProcessor()
        try:
            self._processor.LoadFromSerializedProto(model_proto(vocabulary))
        except (RuntimeError, OSError) as error:
            raise TokenizerError(f"tokenizer.ggml.tokens: SentencePiece refuses this vocabulary: {error}") from None

    def encode_text(self, text: str) -> list[int]:
        return self._processor.EncodeAsIds(text)


def _token_bytes(index: int, text: str, token_type: int) -> bytes:
    if token_type == TokenType.BYTE:
        match = _BYTE_TOKEN.fullmatch(text)
        if match is None:
            problem = f"byte token {excerpt(text)} is not of the form <0xNN>"
            raise TokenizerError(f"tokenizer.ggml.tokens[{index}]: {problem}")
        return bytes((int(match.group(1), 16),))
    if token_type in _LITERAL_TYPES:
        return text.encode("utf-8")
    return text.replace(SPACE_MARK, " ").encode("utf-8")


def model_proto(vocabulary: Vocabulary) -> bytes:
    """A serialized SentencePiece ModelProto for this vocabulary (field numbers of
    sentencepiece_model.proto; written by hand so no protobuf package is needed)."""
    unknown_id = vocabulary.unknown_id
    if unknown_id is None:
        unknown_ids = [i for i, t in enumerate(vocabulary.token_types) if t == TokenType.UNKNOWN]
        if len(unknown_ids) != 1:
            raise TokenizerError(
                "tokenizer.ggml.unknown_token_id: missing, and the vocabulary does not mark exactly one unknown token"
            )
        unknown_id = unknown_ids[0]
    pieces = bytearray()
    entries = zip(vocabulary.tokens, vocabulary.scores, vocabulary.token_types)
    for index, (text, score, token_type) in enumerate(entries):
        if index == unknown_id:
            token_type = TokenType.UNKNOWN  # GGUF files often mark <unk> as control
        elif token_type == TokenType.UNKNOWN:
            token_type = TokenType.CONTROL  # SentencePiece allows one unknown token only
        elif token_type == TokenType.USER_DEFINED:
            # llama.cpp's converter writes spaces in user-defined tokens as real spaces; SentencePiece
            # matches them in text where spaces are already "▁".
            text = text.replace(" ", SPACE_MARK)
        piece = _string(1, text) + _tag(2, 5) + struct.pack("<f", score) + _tag(3, 0) + _varint(int(token_type))
        pieces += _bytes_field(1, piece)
    has_byte_tokens = TokenType.BYTE in vocabulary.token_types
    trainer_spec = (
        _tag(3, 0) + _varint(_BPE_MODEL_TYPE)
        + _tag(4, 0) + _varint(vocabulary.size)
        + _tag(35, 0) + _varint(int(has_byte_tokens))
        + _tag(40, 0) + _varint(unknown_id)
    )  # fmt: skip
    # Identity normalization, spaces as "▁", nothing else: the prefix space is added by the caller,
    # once before the whole text, as SentencePiece does.
    normalizer_spec = (
        _string(1, "identity")
        + _tag(3, 0) + _varint(0)  # add_dummy_prefix
        + _tag(4, 0) + _varint(0)  # remove_extra_whitespaces
        + _tag(5, 0) + _varint(1)  # escape_whitespaces
    )  # fmt: skip
    return bytes(pieces) + _bytes_field(2, trainer_spec) + _bytes_field(3, normalizer_spec)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _tag(field, 2) + _varint(len(payload)) + payload


def _string(field: int, text: str) -> bytes:
    return _bytes_field(field, text.encode("utf-8"))
