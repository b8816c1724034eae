"""Vocabularies and text made to hurt the tokenizer: special tokens nested thousands deep, text that is not
valid Unicode, scores that are NaN, values too long to quote. (tests/fuzz/fuzz_tokenizer.py searches for more.)"""

import random
import time
import tracemalloc

import pytest

from mlspecqd.tokenizer import Tokenizer, TokenizerError
from mlspecqd.tokenizer.special_tokens import SpecialTokenSplitter
from mlspecqd.tokenizer.vocabulary import MAX_SPECIAL_TOKEN_CHARS

CONTROL, USER_DEFINED, NORMAL = 3, 4, 1


def gpt2_metadata(tokens, token_types=None, merges=()):
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.tokens": list(tokens),
            "tokenizer.ggml.token_type": list(token_types or [NORMAL] * len(tokens)),
            "tokenizer.ggml.merges": list(merges)}


def sentencepiece_metadata(tokens, token_types, scores):
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": list(tokens),
            "tokenizer.ggml.token_type": list(token_types), "tokenizer.ggml.scores": list(scores),
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": False}


def reference_split(ids_by_text, text):
    """Leftmost-longest matching, one position at a time."""
    tokens = sorted((token for token in ids_by_text if token), key=len, reverse=True)
    parts, plain_start, position = [], 0, 0
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


@pytest.mark.parametrize("tokens", [
    ["a" * length for length in range(1, 1025)],  # each ends inside the next: the prefix tree nests 1024 deep
    ["a" * length + "b" for length in range(1, 1025)],  # and branches at every level
    ["<" + "x" * 5000 + ">"],  # one long token: a chain without branches
], ids=["nested", "nested-and-branching", "long"])
def test_special_tokens_nested_deep_split_in_linear_time(tokens):
    """Found while fuzzing: the regex prefix tree recursed once per character (RecursionError from 500)."""
    ids = {text: index for index, text in enumerate(tokens)}
    texts = ("a" * 3000, ("a" * 1023 + "c") * 3, "<" + "x" * 5000 + ">" * 3)
    started = time.perf_counter()
    splitter = SpecialTokenSplitter(ids)
    parts = [splitter.split(text * 10) for text in texts]
    assert time.perf_counter() - started < 5  # linear: 150,000 characters in well under a second
    for text, split in zip(texts, parts):
        assert splitter.split(text) == reference_split(ids, text)
        assert len(split) <= 10 * len(splitter.split(text))


def test_the_splitter_is_leftmost_longest_on_random_tokens():
    rng = random.Random(0)
    for _ in range(2000):
        tokens = {"".join(rng.choice("ab<|") for _ in range(rng.randint(0, 7))): i for i in range(rng.randint(1, 9))}
        text = "".join(rng.choice("ab<|x") for _ in range(rng.randint(0, 40)))
        assert SpecialTokenSplitter(tokens).split(text) == reference_split(tokens, text), (tokens, text)


def test_a_vocabulary_with_deeply_nested_special_tokens_encodes():
    tokens = ["a", "b"] + ["a" * length for length in range(2, 600)]
    types = [NORMAL, NORMAL] + [USER_DEFINED] * 598
    tokenizer = Tokenizer.from_gguf_metadata(gpt2_metadata(tokens, types))
    assert tokenizer.encode("a" * 1000 + "b") == [tokenizer.vocabulary.tokens.index("a" * 599)] + [
        tokenizer.vocabulary.tokens.index("a" * 401), 1]


def test_special_tokens_too_long_in_all_are_refused():
    tokens = ["a", "<" + "x" * MAX_SPECIAL_TOKEN_CHARS + ">"]
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.tokens: special tokens of \d+ characters in all"):
        Tokenizer.from_gguf_metadata(gpt2_metadata(tokens, [NORMAL, CONTROL]))


@pytest.mark.parametrize("metadata", [
    gpt2_metadata(["a", "b", "ab"], merges=["a b"]),
    sentencepiece_metadata(["<unk>", "\u2581", "a"], [2, NORMAL, NORMAL], [0.0, -1.0, -2.0]),
], ids=["byte-level", "sentencepiece"])
@pytest.mark.parametrize("parse_special", [False, True])
def test_text_with_a_lone_surrogate_is_a_tokenizer_error(metadata, parse_special):
    """Found by fuzz_tokenizer: SentencePiece raised RuntimeError and byte-level BPE UnicodeEncodeError for
    text JSON may carry ("\\ud800") or an undecodable command-line argument becomes."""
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    with pytest.raises(TokenizerError, match=r"lone surrogate '\\udcff' at character 2"):
        tokenizer.encode("ab\udcffa", parse_special=parse_special)


def test_nan_scores_are_refused():
    metadata = sentencepiece_metadata(["<unk>", "\u2581", "a"], [2, NORMAL, NORMAL], [0.0, float("nan"), -2.0])
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.scores\[1\]: NaN"):
        Tokenizer.from_gguf_metadata(metadata)


@pytest.mark.parametrize("metadata, where", [
    (gpt2_metadata(["a", "b"], merges=["a\nb" * 10_000]), "merges[0]"),
    ({**gpt2_metadata(["a"]), "tokenizer.ggml.pre": "x\n" * 10_000}, "pre"),
    ({**gpt2_metadata(["a"]), "tokenizer.ggml.add_bos_token": list(range(100_000))}, "add_bos_token"),
    ({**gpt2_metadata(["a"]), "tokenizer.ggml.model": "\r" * 10_000}, "model"),
])
def test_refusals_quote_file_values_in_one_short_line(metadata, where):
    with pytest.raises(TokenizerError) as caught:
        Tokenizer.from_gguf_metadata(metadata)
    message = str(caught.value)
    assert where in message and "\n" not in message and "\r" not in message and len(message) < 400


def test_encoding_distinct_long_words_keeps_no_memory():
    """Found with fuzz_batch_request (memory growing with every request): byte-level BPE cached the ids of
    every distinct piece of text, of any length, up to a million pieces."""
    tokenizer = Tokenizer.from_gguf_metadata(gpt2_metadata(["a", "b", "ab"], merges=["a b"]))
    rng = random.Random(1)
    words = ["".join(rng.choice("ab") for _ in range(5000)) for _ in range(40)]
    tokenizer.encode("warm up")
    tracemalloc.start()
    try:
        for word in words:
            tokenizer.encode(word)
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert retained < 100_000
