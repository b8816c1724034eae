"""Gemma 3 beyond the decoder's arithmetic (tests/engine/test_decoder.py has that): the GGUF metadata it
reads (logit softcapping refused, the sliding-window pattern in each form a file may give), and
(real_model) the 270M checkpoint: llama.cpp's greedy text, its end-of-turn token, and its MXFP4 self-draft
giving the BF16 model's own tokens through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlspecqd.engine.model import Model
from mlspecqd.gguf import GGUFError, open_gguf
from mlspecqd.tokenizer import Tokenizer
from support.gguf_fixtures import write_model_gguf
from support.real_models import real_model_path


def gemma3_spec(tmp_path, spec_overrides=None, extra_metadata=None):
    path = tmp_path / "gemma3.gguf"
    write_model_gguf(path, "gemma3", spec_overrides=spec_overrides, extra_metadata=extra_metadata)
    with open_gguf(path) as gguf_file:
        return gguf_file.spec


@pytest.mark.parametrize("key", ["gemma3.attn_logit_softcapping", "gemma3.final_logit_softcapping"])
def test_logit_softcapping_is_refused(tmp_path, key):
    with pytest.raises(GGUFError, match=rf"{key}: logit softcapping \(50.0\) is not supported"):
        gemma3_spec(tmp_path, extra_metadata={key: 50.0})
    assert gemma3_spec(tmp_path, extra_metadata={key: 0.0}).architecture == "gemma3"  # a zero cap is no cap


@pytest.mark.parametrize("stated, period", [
    (None, 6),  # Gemma 3 files usually leave the pattern to the family
    (4, 4),
    ([True, True, False, True, True, False], 3),
    ([True] * 6, 7),  # every layer sliding
])
def test_sliding_window_pattern_forms(tmp_path, stated, period):
    metadata = {} if stated is None else {"gemma3.attention.sliding_window_pattern": stated}
    spec = gemma3_spec(tmp_path, {"n_layers": 6}, metadata)
    assert spec.sliding_window_pattern == period


@pytest.mark.parametrize("stated, message", [
    ([True, False, True, True, True, True], r"sliding and global layers that do not repeat with one period"),
    ([True, False], r"expected 6 booleans \(one per layer\) or a number"),
    (0, r"must be at least 1, got 0"),
])
def test_bad_sliding_window_patterns_are_refused(tmp_path, stated, message):
    with pytest.raises(GGUFError, match=rf"gemma3.attention.sliding_window_pattern: {message}"):
        gemma3_spec(tmp_path, {"n_layers": 6}, {"gemma3.attention.sliding_window_pattern": stated})


# The real checkpoint (skipped unless `mlspecqd pull gemma-3-270m` has cached it).

@pytest.fixture(scope="module")
def gemma3_path():
    return real_model_path("gemma-3-270m")


@pytest.mark.real_model
def test_real_gemma3_greedy_text_is_llama_cpps(gemma3_path):
    """llama.cpp 0c1e570 (llama-completion --temp 0 on the BF16 conversion of this file) continues the
    prompt with these words; the native decoder upcasts the same weights to the same BF16 values."""
    tokenizer = Tokenizer.from_gguf(gemma3_path)
    with Model.load(gemma3_path, context_length=256) as model:
        sequence = tokenizer.encode("The capital of France is")
        logits = model.forward(sequence, 0)
        for _ in range(24):
            sequence.append(int(logits[0].argmax()))
            logits = model.forward(sequence[-1:], len(sequence) - 1)
    text = tokenizer.decode(sequence[len(tokenizer.encode("The capital of France is")):])
    assert text.startswith(" the capital of the country of France. It is the largest city in France and the second")


@pytest.mark.real_model
def test_real_gemma3_turn_tokens(gemma3_path):
    """<end_of_turn> ends a generation along with <eos> (the file marks only <eos>), and a chat turn
    written as text becomes Gemma's turn tokens."""
    tokenizer = Tokenizer.from_gguf(gemma3_path)
    end_of_turn, start_of_turn = 106, 105
    assert tokenizer.decode([end_of_turn]) == "<end_of_turn>" and tokenizer.decode([start_of_turn]) == "<start_of_turn>"
    assert {1, end_of_turn} <= tokenizer.end_of_generation_ids
    ids = tokenizer.encode("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", parse_special=True)
    assert ids[:2] == [2, start_of_turn] and ids.count(end_of_turn) == 1 and ids.count(start_of_turn) == 2


@pytest.mark.real_model
@pytest.mark.slow
def test_real_gemma3_mxfp4_draft_gives_the_bf16_tokens(gemma3_path):
    """`mlspecqd generate -m gemma-3-270m --draft mxfp4` emits exactly the tokens of `--no-speculation`,
    and the draft's tokens were accepted."""

    def run(*flags):
        done = subprocess.run([sys.executable, "-m", "mlspecqd", "generate", "-m", "gemma-3-270m", "-n", "64",
                               "-p", "Write a short story about a lighthouse keeper.", "--json", *flags],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    plain = run("--no-speculation")
    speculative = run("--draft", "mxfp4")
    assert speculative["tokens"] == plain["tokens"] and len(plain["tokens"]) == 64
    assert speculative["levels"] == ["mxfp4", "target:bf16"]
    assert speculative["timings"]["levels"][0]["draft_n_accepted"] > 0
