"""Fuzz target: the tokenizers. Text through encode and back, any ids through decode and the stream
decoder, vocabularies made of the input through Tokenizer.from_gguf_metadata, the special-token splitter.

    python tests/fuzz/fuzz_tokenizer.py -max_total_time=600 CORPUS SEEDS

The real vocabularies are those of the checkpoints in the mlspecqd cache (SmolLM2: byte-level BPE with
the smollm pre-tokenizer; Qwen2.5: qwen2; Gemma 3: SentencePiece); without them, the seed vocabularies
of make_seeds.py stand in. The first input byte picks the mode (see test_one_input). Accepted:
results that satisfy the properties checked below, or a TokenizerError of one line.
"""

from __future__ import annotations

import math
import struct
import sys
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness

with _harness.instrumented(["mlspecqd.tokenizer"]):
    from mlspecqd import hub
    from mlspecqd.tokenizer import Tokenizer, TokenizerError
    from mlspecqd.tokenizer.byte_level_bpe import BYTE_ALPHABET
    from mlspecqd.tokenizer.pretokenizers import PRE_TOKENIZERS
    from mlspecqd.tokenizer.special_tokens import SpecialTokenSplitter

import make_seeds  # after the package: it imports the tokenizer, which must be imported instrumented

REAL_CHECKPOINTS = ("SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                    "gemma-3-270m-q4_k_m.gguf")


def _real_tokenizers() -> list[Tokenizer]:
    tokenizers = [Tokenizer.from_gguf(hub.cache_dir() / name) for name in REAL_CHECKPOINTS
                  if (hub.cache_dir() / name).is_file()]
    if not tokenizers:
        for index, add in enumerate((make_seeds.add_gpt2_vocabulary, make_seeds.add_sentencepiece_vocabulary)):
            path = _harness.SCRATCH / f"seed-vocabulary-{index}.gguf"
            make_seeds.write_vocabulary_only(path, add)
            tokenizers.append(Tokenizer.from_gguf(path))
    return tokenizers


TOKENIZERS = _real_tokenizers()


def _dropped_bytes(tokenizer: Tokenizer) -> frozenset[int]:
    """Bytes a byte-level vocabulary has no token for: encode drops them, so text with them cannot
    come back whole."""
    if tokenizer.vocabulary.model != "gpt2":
        return frozenset()
    tokens = set(tokenizer.vocabulary.tokens)
    return frozenset(byte for byte, char in enumerate(BYTE_ALPHABET) if char not in tokens)


DROPPED = [_dropped_bytes(tokenizer) for tokenizer in TOKENIZERS]


def _check_ids(tokenizer: Tokenizer, ids: list[int]) -> None:
    assert all(isinstance(token, int) and 0 <= token < tokenizer.vocab_size for token in ids), ids[:20]


def _stream(tokenizer: Tokenizer, ids: list[int], skip_special: bool) -> str:
    decoder = tokenizer.stream_decoder(skip_special=skip_special)
    return "".join(decoder.feed(token) for token in ids) + decoder.flush()


def encode_real(source: _harness.Bytes) -> None:
    """Mode 0: encode text with a real tokenizer, decode it back, stream it."""
    index = source.byte() % len(TOKENIZERS)
    tokenizer = TOKENIZERS[index]
    flags = source.byte()
    add_special, parse_special, surrogates = bool(flags & 1), bool(flags & 2), bool(flags & 4)
    text = source.rest().decode("utf-8", "surrogateescape" if surrogates else "replace")
    try:
        ids = tokenizer.encode(text, add_special=add_special, parse_special=parse_special)
    except TokenizerError as error:
        _harness.check_refusal(error)
        assert any(0xD800 <= ord(char) <= 0xDFFF for char in text), f"refused valid text: {error}"
        return
    _check_ids(tokenizer, ids)
    if add_special and tokenizer.add_bos:
        assert ids[:1] == [tokenizer.bos_id]
    decoded = tokenizer.decode(ids)
    assert _stream(tokenizer, ids, skip_special=False) == decoded
    if add_special or parse_special or DROPPED[index].intersection(text.encode("utf-8")):
        return
    expected = unicodedata.normalize("NFC", text) if tokenizer.vocabulary.pre == "qwen2" else text
    assert decoded == expected, (text, decoded, ids)


def decode_ids(source: _harness.Bytes) -> None:
    """Mode 1: any ids, in and out of range, through decode and the stream decoder."""
    tokenizer = TOKENIZERS[source.byte() % len(TOKENIZERS)]
    skip_special = bool(source.byte() & 1)
    ids = []
    while (chunk := source.take(4)) and len(ids) < 256:
        value = int.from_bytes(chunk.ljust(4, b"\0"), "little", signed=True)
        ids.append(value % tokenizer.vocab_size if value >= -8 else value)  # mostly valid, some negative
    try:
        text = tokenizer.decode(ids, skip_special=skip_special)
    except TokenizerError as error:
        _harness.check_refusal(error)
        assert any(not 0 <= token < tokenizer.vocab_size for token in ids)
        return
    assert _stream(tokenizer, ids, skip_special) == text


_SYMBOLS = ["a", "b", "ab", "\u0120", "\u2581", " ", "\n", "<", ">", "|", "<0x41>", "<0xZZ>", "", "\u00e9",
            "<|im_start|>", "\u0120a", "ba", "aa"]


def _string(source: _harness.Bytes) -> str:
    """A short string: mostly pieces of token-like text, sometimes raw input text."""
    selector = source.byte()
    if selector < 32:
        return source.text(8)
    return "".join(str(source.choice(_SYMBOLS)) for _ in range(selector % 4))


def _number(source: _harness.Bytes) -> object:
    kind = source.byte() % 8
    if kind == 0:
        return struct.unpack("<f", source.take(4).ljust(4, b"\0"))[0]  # NaN and infinities included
    if kind == 1:
        return source.integer(8, signed=True)
    return -float(source.byte())


def vocabulary_metadata(source: _harness.Bytes) -> dict[str, object]:
    """tokenizer.ggml.* keys made of the input: valid often enough to get past the checks, wrong in every way."""
    n_tokens = source.byte() % 16
    prefix = "tokenizer.ggml."
    tokens = [_string(source) for _ in range(n_tokens)]
    metadata: dict[str, object] = {
        prefix + "model": source.choice(["gpt2", "llama", "gpt2", "llama", "bert", 7]),
        prefix + "tokens": tokens,
        prefix + "token_type": [source.byte() % 8 for _ in range(n_tokens + (source.byte() % 5 == 0))],
        prefix + "merges": [f"{source.choice(tokens or ['a'])} {source.choice(tokens or ['b'])}"
                            if source.byte() % 4 else _string(source) for _ in range(source.byte() % 8)],
        prefix + "scores": [_number(source) for _ in range(n_tokens)],
        prefix + "pre": source.choice([*PRE_TOKENIZERS, "default", None, "unknown", 3]),
    }
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "eot_token_id"):
        if source.byte() % 2:
            metadata[prefix + key] = source.choice([0, 1, 2, n_tokens, -1, 2**40, True, "1", 1.5])
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        if source.byte() % 2:
            metadata[prefix + key] = source.choice([True, False, 0, 1, 2, "yes"])
    return {key: value for key, value in metadata.items() if value is not None}


def synthetic_vocabulary(source: _harness.Bytes) -> None:
    """Mode 2: a vocabulary made of the input, then text through it."""
    metadata = vocabulary_metadata(source)
    try:
        tokenizer = Tokenizer.from_gguf_metadata(metadata)
    except TokenizerError as error:
        _harness.check_refusal(error)
        return
    text = source.rest().decode("utf-8", "replace")
    for parse_special in (False, True):
        ids = tokenizer.encode(text, parse_special=parse_special)
        _check_ids(tokenizer, ids)
        assert _stream(tokenizer, ids, skip_special=False) == tokenizer.decode(ids)
    scores = tokenizer.vocabulary.scores
    assert all(isinstance(score, float) for score in scores) and not any(math.isnan(s) for s in scores)


def split_special(source: _harness.Bytes) -> None:
    """Mode 3: the special-token splitter over tokens and text made of the input (leftmost, longest)."""
    texts = {source.text(40): index for index in range(source.byte() % 12)}
    splitter = SpecialTokenSplitter(texts)
    text = source.rest().decode("utf-8", "replace")
    parts = splitter.split(text)
    assert parts == _reference_split(texts, text), (texts, text)


def _reference_split(ids_by_text: dict[str, int], text: str) -> list[str | int]:
    """Leftmost-longest matching, one position at a time."""
    tokens = sorted((token for token in ids_by_text if token), key=len, reverse=True)
    parts: list[str | int] = []
    plain_start = position = 0
    while position < len(text):
        match = next((token for token in tokens if text.startswith(token, position)), None)
        if match is None:
            position += 1
            continue
        if position > plain_start:
            parts.append(text[plain_start:position])
        parts.append(ids_by_text[match])
        position = plain_start = position + len(match)
    if plain_start < len(text):
        parts.append(text[plain_start:])
    return parts


MODES = (encode_real, decode_ids, synthetic_vocabulary, split_special)


def test_one_input(data: bytes) -> None:
    source = _harness.Bytes(data)
    MODES[source.byte() % len(MODES)](source)


if __name__ == "__main__":
    _harness.main(test_one_input)
