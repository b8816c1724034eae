"""Byte-level BPE (GGUF tokenizer model "gpt2"): GPT-2, Qwen2, Llama 3, SmolLM vocabularies.

Tokens are spelled in GPT-2's byte alphabet: each byte is one printable character, so a space is
"Ġ". Text is cut into pieces by the pre-tokenizer, each piece is spelled in that alphabet, and
adjacent symbols are merged by rank, lowest first, leftmost first among equals.
"""

from __future__ import annotations

import heapq

from mlspecqd.gguf.format import excerpt
from mlspecqd.tokenizer.pretokenizers import PRE_TOKENIZERS, PreTokenizer
from mlspecqd.tokenizer.vocabulary import TokenizerError, TokenType, Vocabulary


def _byte_alphabet() -> list[str]:
    """The character GPT-2 spells each byte with: printable Latin-1 bytes as themselves, the rest
    shifted past U+00FF in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    alphabet, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(0x100 + shifted))
            shifted += 1
    return alphabet


BYTE_ALPHABET = _byte_alphabet()
_CHAR_TO_BYTE = {char: byte for byte, char in enumerate(BYTE_ALPHABET)}

_LITERAL_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN, TokenType.UNUSED)
# The encoding cache keeps the first pieces seen (the frequent words of a text come early), short ones only.
_CACHE_ENTRIES = 1 << 16
_CACHED_PIECE_CHARS = 64


class ByteLevelBPE:
    """Encodes text without special tokens; decodes any token to its bytes."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        if vocabulary.pre is None:
            raise TokenizerError("tokenizer.ggml.pre: missing (a byte-level BPE vocabulary needs its pre-tokenizer)")
        pre_tokenizer = PRE_TOKENIZERS.get(vocabulary.pre)
        if pre_tokenizer is None:
            raise TokenizerError(
                f"tokenizer.ggml.pre: unsupported pre-tokenizer {excerpt(vocabulary.pre)} "
                f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})"
            )
        if vocabulary.add_space_prefix:
            raise TokenizerError("tokenizer.ggml.add_space_prefix: not supported for byte-level BPE")
        self.pre_tokenizer: PreTokenizer = pre_tokenizer
        # A token text that appears twice maps to its last id, as in llama.cpp and transformers.
        self._ids = {token: index for index, token in enumerate(vocabulary.tokens)}
        # Latin-1 decoding turns bytes into code points 0..255; this table spells those in the byte
        # alphabet. A byte the vocabulary has no token for is dropped before merging, as transformers
        # does (SmolLM2 lacks the bytes that never occur in UTF-8 text, and a few control characters).
        self._spell_bytes = str.maketrans(
            {byte: (char if char in self._ids else None) for byte, char in enumerate(BYTE_ALPHABET)}
        )
        self._ranks = _merge_ranks(vocabulary.merges, self._ids)
        self._cache: dict[str, list[int]] = {}
        self.token_bytes_table = [
            text.encode("utf-8") if token_type in _LITERAL_TYPES else _unspell(text)
            for text, token_type in zip(vocabulary.tokens, vocabulary.token_types)
        ]

    def encode_text(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for piece in self.pre_tokenizer.split(self.pre_tokenizer.normalize(text)):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self._merge(piece.encode("utf-8").decode("latin-1").translate(self._spell_bytes))
                # Bounded in entries and in the size of each, so that no stream of text (a server's requests)
                # grows memory without limit: at most some tens of MB.
                if len(piece) <= _CACHED_PIECE_CHARS and len(cache) < _CACHE_ENTRIES:
                    cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids

    def _merge(self, word: str) -> list[int]:
        ids, ranks = self._ids, self._ranks
        if len(word) <= 1:
            return [ids[word]] if word else []
        if self.pre_tokenizer.ignore_merges and word in ids:
            return [ids[word]]
        symbols: list[str | None] = list(word)
        count = len(symbols)
        following = list(range(1, count + 1))
        following[-1] = -1
        preceding = list(range(-1, count - 1))
        queue = []
        for position in range(count - 1):
            rank = ranks.get(f"{word[position]} {word[position + 1]}")
            if rank is not None:
                queue.append((rank, position))
        heapq.heapify(queue)
        while queue:
            rank, left = heapq.heappop(queue)
            right = following[left]
            left_symbol = symbols[left]
            if left_symbol is None or right == -1:
                continue
            right_symbol = symbols[right]
            # The entry is stale if either side has been merged into something else since.
            if ranks.get(f"{left_symbol} {right_symbol}") != rank:
                continue
            merged = left_symbol + right_symbol  # type: ignore[operator]
            symbols[left] = merged
            symbols[right] = None
            after = following[right]
            following[left] = after
            if after != -1:
                preceding[after] = left
                next_rank = ranks.get(f"{merged} {symbols[after]}")
                if next_rank is not None:
                    heapq.heappush(queue, (next_rank, left))
            before = preceding[left]
            if before != -1:
                previous_rank = ranks.get(f"{symbols[before]} {merged}")
                if previous_rank is not None:
                    heapq.heappush(queue, (previous_rank, before))
        result = []
        position = 0
        while position != -1:
            result.append(ids[symbols[position]])  # type: ignore[index]
            position = following[position]
        return result


def _merge_ranks(merges: list[str], ids: dict[str, int]) -> dict[str, int]:
    """Rank of each merge, keyed by its "left right" text (a byte-alphabet token has no space)."""
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, separator, right = merge.partition(" ")
        if not separator or not left or not right or " " in right:
            problem = "is not two tokens separated by one space"
            raise TokenizerError(f"tokenizer.ggml.merges[{rank}]: {excerpt(merge)} {problem}")
        for part in (left, right, left + right):
            if part not in ids:
                problem = f"needs {excerpt(part)}, which is not a token"
                raise TokenizerError(f"tokenizer.ggml.merges[{rank}]: {excerpt(merge)} {problem}")
        # The first occurrence of a repeated merge is the one that applies.
        ranks.setdefault(merge, rank)
    return ranks


def _unspell(text: str) -> bytes:
    """The bytes a token spelled in the byte alphabet stands for; a character outside the alphabet
    (a mislabelled token) stands for its own UTF-8."""
    return b"".join(
        bytes((_CHAR_TO_BYTE[char],)) if char in _CHAR_TO_BYTE else char.encode("utf-8") for char in text
    )
