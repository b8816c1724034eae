"""Tokenizer tests: synthetic vocabularies written here, and (real_model) the four real GGUF files."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import sentencepiece

from mlspecqd.gguf import GGUFError
from mlspecqd.tokenizer import Tokenizer, TokenizerError, TokenType
from mlspecqd.tokenizer.byte_level_bpe import BYTE_ALPHABET
from mlspecqd.tokenizer.pretokenizers import PRE_TOKENIZERS
from support.real_tokenizers import cached_text, real_tokenizer, transformers_tokenizer


def spell(text: str) -> str:
    """Text in GPT-2's byte alphabet, as byte-level vocabularies store tokens."""
    return "".join(BYTE_ALPHABET[byte] for byte in text.encode("utf-8"))


def byte_level_metadata(
    merges: list[tuple[str, str]] = (), specials: list[tuple[str, TokenType]] = (), pre: str = "gpt2", **keys
) -> dict:
    """A byte-level BPE vocabulary: the 256 byte tokens, one token per merge result, then specials."""
    tokens = list(BYTE_ALPHABET)
    for left, right in merges:
        if spell(left + right) not in tokens:
            tokens.append(spell(left + right))
    types = [int(TokenType.NORMAL)] * len(tokens)
    for text, token_type in specials:
        tokens.append(text)
        types.append(int(token_type))
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": [f"{spell(left)} {spell(right)}" for left, right in merges],
    }
    metadata.update({f"tokenizer.ggml.{key}": value for key, value in keys.items()})
    return metadata


def token_ids(metadata: dict, *texts: str) -> list[int]:
    tokens = metadata["tokenizer.ggml.tokens"]
    return [tokens.index(text) if text in tokens else tokens.index(spell(text)) for text in texts]


CHAT_SPECIALS = [
    ("<|endoftext|>", TokenType.CONTROL),
    ("<|im_start|>", TokenType.CONTROL),
    ("<|im_end|>", TokenType.CONTROL),
    ("<tool>", TokenType.USER_DEFINED),
]


# --- byte-level BPE ------------------------------------------------------------------------------


def test_byte_alphabet_is_gpt2s():
    assert len(set(BYTE_ALPHABET)) == 256
    assert BYTE_ALPHABET[ord("a")] == "a"
    assert BYTE_ALPHABET[ord(" ")] == "Ġ"
    assert BYTE_ALPHABET[ord("\n")] == "Ċ"
    assert BYTE_ALPHABET[0] == "Ā"
    assert BYTE_ALPHABET[0xAD] == "Ń"


def test_merges_apply_by_rank():
    metadata = byte_level_metadata([("a", "b"), ("ab", "c")])
    assert Tokenizer.from_gguf_metadata(metadata).encode("abc") == token_ids(metadata, "abc")
    # With "b c" ranked first, "a" is left alone and "a bc" is no merge.
    metadata = byte_level_metadata([("b", "c"), ("a", "b"), ("ab", "c")])
    assert Tokenizer.from_gguf_metadata(metadata).encode("abc") == token_ids(metadata, "a", "bc")


def test_equal_rank_merges_leftmost_first():
    metadata = byte_level_metadata([("a", "a")])
    assert Tokenizer.from_gguf_metadata(metadata).encode("aaa") == token_ids(metadata, "aa", "a")


def test_long_piece_merges_completely():
    merges = [("a", "a"), ("aa", "aa"), ("aaaa", "aaaa")]
    metadata = byte_level_metadata(merges)
    ids = Tokenizer.from_gguf_metadata(metadata).encode("a" * 4099)
    assert ids == token_ids(metadata, "aaaaaaaa") * 512 + token_ids(metadata, "aa", "a")


@pytest.mark.parametrize(
    ("pre", "text", "pieces"),
    [
        ("gpt2", "I'm  here 123!!", ["I", "'m", " ", " here", " 123", "!!"]),
        ("gpt2", "it'S x\x1cy", ["it", "'", "S", " x", "\x1c", "y"]),  # case matters; U+001C is no space
        ("gpt2", "a \n\n b  ", ["a", " \n\n", " b", "  "]),
        ("qwen2", "Hello 123\n\n  x's", ["Hello", " ", "1", "2", "3", "\n\n", " ", " x", "'s"]),
        ("qwen2", "IT'S ok...\n", ["IT", "'S", " ok", "...\n"]),
        ("llama-bpe", "12345 naïve 日本", ["123", "45", " naïve", " 日本"]),
        ("smollm", "a  12 b3", ["a", "  ", "1", "2", " b", "3"]),  # digits first, then GPT-2 per piece
    ],
)
def test_pre_tokenizer_pieces(pre, text, pieces):
    assert PRE_TOKENIZERS[pre].split(text) == pieces


def test_qwen2_normalizes_to_nfc():
    tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata(pre="qwen2"))
    # Byte tokens come first in byte order, so a byte's id is its value.
    assert tokenizer.encode("e\u0301") == tokenizer.encode("\u00e9") == [0xC3, 0xA9]


def test_llama3_takes_whole_tokens_without_merging():
    # "abc" is a token no merge sequence reaches ("b c" comes first and "a bc" is no merge).
    metadata = byte_level_metadata([("b", "c"), ("a", "b"), ("ab", "c")], pre="llama-bpe")
    assert Tokenizer.from_gguf_metadata(metadata).encode("abc") == token_ids(metadata, "abc")


def test_bytes_without_a_token_are_dropped_before_merging():
    metadata = byte_level_metadata([("a", "b")])
    for byte in "ä".encode():  # C3 A4
        metadata["tokenizer.ggml.tokens"][byte] = f"[unused{byte}]"
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    assert tokenizer.encode("aäb") == token_ids(metadata, "ab")


def test_special_tokens_parsed_only_when_asked():
    metadata = byte_level_metadata(specials=CHAT_SPECIALS)
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    im_start, tool = token_ids(metadata, "<|im_start|>", "<tool>")
    assert tokenizer.encode("<|im_start|>x", parse_special=True) == [im_start, ord("x")]
    plain = tokenizer.encode("<|im_start|>x")
    assert im_start not in plain and tokenizer.decode(plain) == "<|im_start|>x"
    # User-defined tokens are always whole.
    assert tokenizer.encode("<tool>") == [tool]


def test_special_tokens_match_longest_first():
    specials = [("<a>", TokenType.CONTROL), ("<a><b>", TokenType.CONTROL), ("<b>", TokenType.CONTROL)]
    metadata = byte_level_metadata(specials=specials)
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    assert tokenizer.encode("<a><b><b>", parse_special=True) == token_ids(metadata, "<a><b>", "<b>")


def test_bos_and_eos_added_as_the_file_says():
    metadata = byte_level_metadata(specials=CHAT_SPECIALS, bos_token_id=256, eos_token_id=258)
    metadata["tokenizer.ggml.add_bos_token"] = True
    metadata["tokenizer.ggml.add_eos_token"] = True
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    assert tokenizer.encode("a") == [256, BYTE_ALPHABET.index("a"), 258]
    assert tokenizer.encode("a", add_special=False) == [BYTE_ALPHABET.index("a")]
    assert tokenizer.encode("") == [256, 258]


def test_end_of_generation_ids():
    metadata = byte_level_metadata(specials=CHAT_SPECIALS, eos_token_id=258)
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    # <|im_end|> is EOS; <|endoftext|> ends a turn by its text.
    assert tokenizer.end_of_generation_ids == {256, 258}
    assert tokenizer.is_end_of_generation(258) and not tokenizer.is_end_of_generation(257)


def test_decode_round_trip_and_skip_special():
    metadata = byte_level_metadata([("h", "i"), (" ", "w")], specials=CHAT_SPECIALS)
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    text = "<|im_start|>hi wörld 😀\n<tool><|im_end|>"
    ids = tokenizer.encode(text, parse_special=True)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special=True) == "hi wörld 😀\n<tool>"
    assert tokenizer.token_bytes(ids[-1]) == b"<|im_end|>"
    assert tokenizer.token_bytes(BYTE_ALPHABET.index("Ġ")) == b" "


def test_stream_decoder_holds_partial_characters():
    tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata())
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.feed(token_id) for token_id in tokenizer.encode("é😀")]
    assert pieces == ["", "é", "", "", "", "😀"]
    assert decoder.flush() == ""


def test_stream_decoder_equals_decode_on_random_bytes():
    metadata = byte_level_metadata(specials=CHAT_SPECIALS)
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    generator = random.Random(7)
    for _ in range(200):
        ids = [generator.randrange(tokenizer.vocab_size) for _ in range(generator.randrange(1, 12))]
        for skip_special in (False, True):
            decoder = tokenizer.stream_decoder(skip_special=skip_special)
            streamed = "".join(decoder.feed(token_id) for token_id in ids) + decoder.flush()
            assert streamed == tokenizer.decode(ids, skip_special=skip_special)


def test_same_vocabulary_names_the_difference():
    base = byte_level_metadata([("a", "b")], specials=CHAT_SPECIALS, eos_token_id=258)
    tokenizer = Tokenizer.from_gguf_metadata(base)
    assert tokenizer.same_vocabulary(Tokenizer.from_gguf_metadata(dict(base))) is None
    other_merges = byte_level_metadata([("a", "b")], specials=CHAT_SPECIALS, eos_token_id=258)
    other_merges["tokenizer.ggml.merges"] = [f"{spell('a')} {spell('b')}", f"{spell('a')} {spell('b')}"]
    assert "merges" in tokenizer.same_vocabulary(Tokenizer.from_gguf_metadata(other_merges))
    other_tokens = byte_level_metadata([("a", "c")], specials=CHAT_SPECIALS, eos_token_id=258)
    assert "tokens differ first at index 256" in tokenizer.same_vocabulary(Tokenizer.from_gguf_metadata(other_tokens))
    other_eos = byte_level_metadata([("a", "b")], specials=CHAT_SPECIALS, eos_token_id=259)
    assert "eos_id" in tokenizer.same_vocabulary(Tokenizer.from_gguf_metadata(other_eos))
    other_pre = byte_level_metadata([("a", "b")], specials=CHAT_SPECIALS, eos_token_id=258, pre="qwen2")
    assert "pre" in tokenizer.same_vocabulary(Tokenizer.from_gguf_metadata(other_pre))


def test_encodes_two_megabytes_in_seconds():
    # Not a timing claim (bench/tokenizer_agreement.py measures speed): a guard against a quadratic path.
    metadata = byte_level_metadata([("t", "h"), ("th", "e"), (" ", "the")], pre="qwen2")
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    generator = random.Random(3)
    words = ["the", " the", " 12", "!", "\n", "  ", " naïve", " 日本", " " * 30, "x" * 200]
    text = "".join(generator.choice(words) for _ in range(200_000))[: 2_000_000]
    assert tokenizer.decode(tokenizer.encode(text)) == text


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.pre": "mystery-pre"}, "unsupported pre-tokenizer 'mystery-pre'"),
        ({"tokenizer.ggml.pre": None}, "tokenizer.ggml.pre: missing"),
        ({"tokenizer.ggml.model": "rwkv"}, "unsupported tokenizer model 'rwkv'"),
        ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model: missing"),
        ({"tokenizer.ggml.tokens": []}, "empty vocabulary"),
        ({"tokenizer.ggml.tokens": "abc"}, "expected a list of strings"),
        ({"tokenizer.ggml.token_type": [1, 1]}, "token_type: 2 entries for 257 tokens"),
        ({"tokenizer.ggml.merges": ["a"]}, "merges[0]: 'a' is not two tokens"),
        ({"tokenizer.ggml.merges": ["a zz"]}, "merges[0]: 'a zz' needs 'zz'"),
        ({"tokenizer.ggml.merges": None}, "tokenizer.ggml.merges: missing"),
        ({"tokenizer.ggml.bos_token_id": 9999}, "bos_token_id: 9999 is out of range"),
        ({"tokenizer.ggml.add_bos_token": True}, "bos_token_id is missing"),
        ({"tokenizer.ggml.add_bos_token": "yes"}, "add_bos_token: expected a boolean"),
        ({"tokenizer.ggml.add_space_prefix": True}, "add_space_prefix: not supported"),
        ({"tokenizer.chat_template": 5}, "chat_template: expected a string"),
    ],
)
def test_bad_metadata_is_a_named_error(change, message):
    metadata = byte_level_metadata(specials=[("<s>", TokenType.CONTROL)])
    for key, value in change.items():
        if value is None:
            del metadata[key]
        else:
            metadata[key] = value
    with pytest.raises(TokenizerError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        Tokenizer.from_gguf_metadata(metadata)


def test_bad_token_type_is_named():
    metadata = byte_level_metadata()
    metadata["tokenizer.ggml.token_type"][7] = 9
    with pytest.raises(TokenizerError, match=r"token_type\[7\]: unknown token type 9"):
        Tokenizer.from_gguf_metadata(metadata)


def test_bad_arguments_are_named_errors():
    tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata())
    with pytest.raises(TokenizerError, match="token id 256 is out of range"):
        tokenizer.decode([1, 256])
    with pytest.raises(TokenizerError, match="token id -1 is out of range"):
        tokenizer.token_bytes(-1)
    with pytest.raises(TokenizerError, match=r"token id 1\.0 is not an integer"):
        tokenizer.decode([1.0])  # type: ignore[list-item]
    assert tokenizer.decode([np.int64(104), np.int32(105)]) == "hi"
    with pytest.raises(TokenizerError, match="text must be a str"):
        tokenizer.encode(b"bytes")  # type: ignore[arg-type]


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "not.gguf"
    path.write_bytes(b"this is no GGUF header at all" * 4)
    with pytest.raises(GGUFError, match=r"not\.gguf: magic"):
        Tokenizer.from_gguf(path)


# --- SentencePiece -------------------------------------------------------------------------------

SENTENCEPIECE_WORDS = ["hello", "world", "token", "speculative", "decoding", "draft", "naïve", "日本語", "a", "b"]


@pytest.fixture(scope="module")
def trained_sentencepiece() -> sentencepiece.SentencePieceProcessor:
    """A small BPE model trained by SentencePiece itself: the reference our rebuilt one must equal."""
    generator = random.Random(0)
    sentences = [" ".join(generator.choice(SENTENCEPIECE_WORDS) for _ in range(8)) for _ in range(2000)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=300, model_type="bpe",
        byte_fallback=True, user_defined_symbols=["<tag>", "\n", "▁▁"], control_symbols=["<ctl>"],
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
    )  # fmt: skip
    return sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())


def sentencepiece_metadata(processor: sentencepiece.SentencePieceProcessor) -> dict:
    """The GGUF form llama.cpp's converter writes: <unk> marked control, user-defined spaces as spaces."""
    tokens, scores, types = [], [], []
    for index in range(processor.get_piece_size()):
        piece = processor.id_to_piece(index)
        if processor.is_unknown(index) or processor.is_control(index):
            token_type = TokenType.CONTROL
        elif processor.is_byte(index):
            token_type = TokenType.BYTE
        elif piece in ("<tag>", "\n", "▁▁"):
            token_type = TokenType.USER_DEFINED
            piece = piece.replace("▁", " ")
        else:
            token_type = TokenType.NORMAL
        tokens.append(piece)
        scores.append(processor.get_score(index))
        types.append(int(token_type))
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.unknown_token_id": processor.unk_id(),
        "tokenizer.ggml.bos_token_id": processor.bos_id(),
        "tokenizer.ggml.eos_token_id": processor.eos_id(),
    }


def random_sentencepiece_text(generator: random.Random) -> str:
    parts = SENTENCEPIECE_WORDS + [" ", "  ", "   ", "\n", "<tag>", "<ctl>", "é", "Ω", "🙂", "x", "\t"]
    return "".join(generator.choice(parts) for _ in range(generator.randrange(1, 14)))


def test_sentencepiece_equals_the_library_on_its_own_model(trained_sentencepiece):
    tokenizer = Tokenizer.from_gguf_metadata(sentencepiece_metadata(trained_sentencepiece))
    generator = random.Random(11)
    for _ in range(400):
        text = random_sentencepiece_text(generator)
        ids = tokenizer.encode(text, add_special=False)
        assert ids == trained_sentencepiece.encode(text), text
        assert tokenizer.decode(ids) == trained_sentencepiece.decode(ids) == text


def test_sentencepiece_bos_byte_fallback_and_prefix_space(trained_sentencepiece):
    metadata = sentencepiece_metadata(trained_sentencepiece)
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    assert tokenizer.add_bos  # llama.cpp's default for SentencePiece
    ids = tokenizer.encode("Ω")
    assert ids[0] == trained_sentencepiece.bos_id()
    assert [trained_sentencepiece.id_to_piece(i) for i in ids[1:]] == ["▁", "<0xCE>", "<0xA9>"]
    assert tokenizer.decode(ids, skip_special=True) == "Ω"
    metadata["tokenizer.ggml.add_space_prefix"] = False
    no_prefix = Tokenizer.from_gguf_metadata(metadata)
    assert no_prefix.encode(" hello world", add_special=False) == tokenizer.encode("hello world", add_special=False)
    assert no_prefix.decode(no_prefix.encode(" hello"), skip_special=True) == " hello"


def test_sentencepiece_stream_strips_the_prefix_space_once(trained_sentencepiece):
    tokenizer = Tokenizer.from_gguf_metadata(sentencepiece_metadata(trained_sentencepiece))
    ids = tokenizer.encode("hello world")
    decoder = tokenizer.stream_decoder(skip_special=True)
    assert "".join(decoder.feed(i) for i in ids) + decoder.flush() == "hello world"


def test_sentencepiece_control_tokens_parsed_when_asked(trained_sentencepiece):
    tokenizer = Tokenizer.from_gguf_metadata(sentencepiece_metadata(trained_sentencepiece))
    control = trained_sentencepiece.piece_to_id("<ctl>")
    assert control in tokenizer.encode("a<ctl>b", parse_special=True)
    assert control not in tokenizer.encode("a<ctl>b")


def test_sentencepiece_bad_input_is_named(trained_sentencepiece):
    metadata = sentencepiece_metadata(trained_sentencepiece)
    with pytest.raises(TokenizerError, match="unsupported pre-tokenizer 'qwen2' for a SentencePiece"):
        Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.pre": "qwen2"})
    with pytest.raises(TokenizerError, match="scores: 3 entries"):
        Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.scores": [0.0, 0.0, 0.0]})
    broken_byte = list(metadata["tokenizer.ggml.tokens"])
    byte_index = metadata["tokenizer.ggml.token_type"].index(TokenType.BYTE)
    broken_byte[byte_index] = "<0xZZ>"
    with pytest.raises(TokenizerError, match=rf"tokens\[{byte_index}\]: byte token '<0xZZ>'"):
        Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.tokens": broken_byte})
    no_unknown = {key: value for key, value in metadata.items() if key != "tokenizer.ggml.unknown_token_id"}
    with pytest.raises(TokenizerError, match="unknown_token_id: missing"):
        Tokenizer.from_gguf_metadata(no_unknown)
    duplicate = list(metadata["tokenizer.ggml.tokens"])
    duplicate[-1] = duplicate[-2]
    with pytest.raises(TokenizerError, match="SentencePiece refuses this vocabulary"):
        Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.tokens": duplicate})


# --- real models ---------------------------------------------------------------------------------

CHAT_TEXT = "Hello 123 world  \n\n x<|im_start|>"


@pytest.mark.real_model
def test_qwen_known_ids():
    tokenizer = real_tokenizer("qwen2.5-coder-0.5b")
    assert tokenizer.vocab_size == 151936 and not tokenizer.add_bos
    assert tokenizer.encode(CHAT_TEXT, parse_special=True) == [9707, 220, 16, 17, 18, 1879, 18611, 856, 151644]
    assert tokenizer.end_of_generation_ids == {151643, 151645}  # <|endoftext|>, <|im_end|>
    assert tokenizer.decode(tokenizer.encode("naïve 日本語 😀\t x")) == "naïve 日本語 😀\t x"


@pytest.mark.real_model
def test_qwen_target_and_draft_share_one_vocabulary():
    draft = real_tokenizer("qwen2.5-coder-0.5b")
    assert real_tokenizer("qwen2.5-coder-1.5b").same_vocabulary(draft) is None
    assert real_tokenizer("smollm2-135m").same_vocabulary(draft) == "pre differs: 'smollm' vs 'qwen2'"


@pytest.mark.real_model
def test_smollm2_known_ids():
    tokenizer = real_tokenizer("smollm2-135m")
    assert tokenizer.encode(CHAT_TEXT, parse_special=True) == [19556, 216, 33, 34, 35, 905, 256, 1116, 1792, 1]
    assert tokenizer.encode("a  1") == [81, 256, 33]  # digits split off first, as llama.cpp does
    assert tokenizer.end_of_generation_ids == {0, 2}  # <|endoftext|>, <|im_end|>


@pytest.mark.real_model
def test_gemma3_known_ids():
    tokenizer = real_tokenizer("gemma-3-270m")
    ids = tokenizer.encode("Hello 123 world  \n\n x<start_of_turn>", parse_special=True)
    assert ids == [2, 9259, 236743, 236770, 236778, 236800, 1902, 138, 108, 1123, 105]
    # Whitespace runs are user-defined tokens, matched longest first (SentencePiece and llama.cpp agree).
    assert tokenizer.encode(" " * 40, add_special=False) == [167, 145]
    assert tokenizer.end_of_generation_ids == {1, 106}  # <eos>, <end_of_turn>
    assert tokenizer.decode(ids, skip_special=True) == "Hello 123 world  \n\n x"


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "smollm2-135m"])
def test_agrees_with_transformers_on_real_text(name):
    reference = transformers_tokenizer(name)
    tokenizer = real_tokenizer(name)
    lines = [line for line in cached_text("wiki").split("\n") if line.strip()][:300]
    lines.append(" ".join(lines[:50]) + " 12345 😀👍🏽  \t\n\n  end")
    expected = reference(lines, add_special_tokens=False)["input_ids"]
    assert [tokenizer.encode(line, add_special=False) for line in lines] == expected
