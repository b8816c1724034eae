import pytest

from mlspecqd.apps.generation import GenerationError, StopStringMatcher, generate
from mlspecqd.engine.sampling import SamplingParams
from mlspecqd.speculative import Cascade, ModelLevel, NgramDrafter
from support.fake_models import ByteTokenizer, FakeClock, FakeLanguageModel, reference_greedy

VOCAB = 128  # ASCII: one character per token
EOS = 0
PROMPT = [ord(c) for c in "def f(x):"]


def text_target(**changes) -> FakeLanguageModel:
    settings = dict(vocab_size=VOCAB, context_length=256, seed=2, eos_id=EOS)
    settings.update(changes)
    return FakeLanguageModel(**settings)


def tokenizer() -> ByteTokenizer:
    return ByteTokenizer(VOCAB, eos_id=EOS)


def speculative(target: FakeLanguageModel, draft_max: int = 4) -> Cascade:
    return Cascade([NgramDrafter(), target.noisy(1.0, seed=9), target.like()], policy="fixed", draft_max=draft_max)


def chunks_of(cascade: Cascade) -> list[list[int]]:
    """Record the token chunks each round of the target emits."""
    chunks = []
    step = cascade.step

    def recording_step(sequence, budget, decoding):
        emitted = step(sequence, budget, decoding)
        chunks.append(list(emitted.tokens))
        return emitted

    cascade.step = recording_step
    return chunks


def test_streamed_pieces_make_the_text_and_timings_have_llama_cpp_shape():
    clock = FakeClock()
    target = text_target(clock=clock, call_seconds=0.01, token_seconds=0.001)
    cascade = Cascade([target.noisy(1.0, seed=9, call_seconds=0.002, token_seconds=0.0001), target.like()],
                      policy="fixed", draft_max=4, clock=clock)
    generation = generate(cascade, tokenizer(), PROMPT, 50)
    pieces = []
    for piece in generation:
        pieces.append(piece)
        clock.advance(1.0)  # a slow reader: its time is not generation time
    result = generation.result
    assert "".join(pieces) == result.text == tokenizer().decode(result.tokens)
    assert result.tokens == reference_greedy(target, PROMPT, 50)
    timings = result.timings
    assert timings["prompt_n"] == len(PROMPT) and timings["cache_n"] == 0 and timings["predicted_n"] == 50
    assert timings["prompt_ms"] > 0 and 0 < timings["predicted_ms"] < 1000
    assert timings["predicted_per_second"] == pytest.approx(50 / (timings["predicted_ms"] / 1e3))
    assert timings["draft_n"] == timings["levels"][0]["draft_n"] > 0
    assert timings["draft_n_accepted"] == timings["levels"][0]["draft_n_accepted"]
    shares = [level["share_of_wall_time"] for level in timings["levels"]]
    assert sum(shares) == pytest.approx(1.0)  # on the fake clock only the models take time
    for key in ("acceptance_by_position", "mean_accepted_length", "draft_length_choices", "forward_ms"):
        assert key in timings["levels"][0]


def test_end_of_generation_token_stops_with_reason_stop():
    target = text_target(eos_at=len(PROMPT) + 7)
    result = generate(speculative(target), tokenizer(), PROMPT, 100).run()
    assert result.tokens == reference_greedy(target, PROMPT, 100, end_ids=[EOS])
    assert result.tokens[-1] == EOS and len(result.tokens) == 8
    assert result.finish_reason == "stop" and "\x00" not in result.text and len(result.text) == 7


def test_max_new_tokens_stops_with_reason_length():
    target = text_target()
    result = generate(speculative(target, draft_max=8), tokenizer(), PROMPT, 13).run()
    assert result.tokens == reference_greedy(target, PROMPT, 13)
    assert result.finish_reason == "length"


@pytest.mark.parametrize("room", [1, 2, 3, 5])
def test_context_nearly_full_ends_with_length_and_plain_output(room):
    target = text_target(context_length=64)
    prompt = (PROMPT * 10)[: 64 - room]
    cascade = speculative(target, draft_max=8)
    result = generate(cascade, tokenizer(), prompt, 100).run()
    assert result.tokens == reference_greedy(target, prompt, 100)
    assert len(result.tokens) == room and result.finish_reason == "length"
    for level in cascade.levels[1:]:
        assert level.model.n_past < 64


@pytest.mark.parametrize("offset", [-2, -1, 0, 1])
def test_stop_string_across_an_acceptance_boundary_ends_like_plain_decoding(offset):
    target = text_target()
    plain = generate(target.like(), tokenizer(), PROMPT, 120).run()
    cascade = speculative(target, draft_max=6)
    chunks = chunks_of(cascade)
    assert generate(cascade, tokenizer(), PROMPT, 120).run().tokens == plain.tokens
    # A stop string of 4 characters around the end of a multi-token chunk, first seen there.
    boundaries = [sum(map(len, chunks[: i + 1])) for i in range(len(chunks)) if len(chunks[i]) >= 3]
    for boundary in boundaries:
        start = boundary + offset - 2
        stop = plain.text[start : start + 4]
        if start > 0 and plain.text.find(stop) == start:
            break
    else:
        pytest.skip("no boundary with a first-seen stop string")
    expected = generate(target.like(), tokenizer(), PROMPT, 120, stop=[stop, "never seen"]).run()
    generation = generate(speculative(target, draft_max=6), tokenizer(), PROMPT, 120, stop=[stop, "never seen"])
    pieces = list(generation)
    result = generation.result
    assert result.text == expected.text == plain.text[:start]
    assert "".join(pieces) == result.text
    assert result.tokens == expected.tokens == plain.tokens[: start + 4]
    assert result.finish_reason == expected.finish_reason == "stop"


def test_cascade_caches_hold_only_accepted_text_after_a_stop_string():
    target = text_target()
    plain = generate(target.like(), tokenizer(), PROMPT, 60).run()
    cascade = speculative(target, draft_max=8)
    result = generate(cascade, tokenizer(), PROMPT, 60, stop=plain.text[30:33]).run()
    sequence = PROMPT + result.tokens
    for level in cascade.levels[1:]:
        assert level.model.cache == level.model.fresh_cache(sequence[: level.model.n_past])


def test_stopping_the_iteration_early_leaves_caches_on_the_accepted_text():
    target = text_target()
    cascade = speculative(target, draft_max=8)
    pieces = iter(generate(cascade, tokenizer(), PROMPT, 100))
    shown = [next(pieces) for _ in range(6)]  # one character per token here
    pieces.close()
    expected = PROMPT + reference_greedy(target, PROMPT, 100)
    assert "".join(shown) == tokenizer().decode(expected[len(PROMPT) : len(PROMPT) + 6])
    for level in cascade.levels[1:]:
        model = level.model
        assert model.n_past <= len(PROMPT) + 6  # nothing the reader did not get stays cached
        assert model.cache == model.fresh_cache(expected[: model.n_past])


def test_stop_string_matcher_holds_back_possible_starts():
    matcher = StopStringMatcher(["abc", "xy"])
    assert matcher.feed("12a") == ("12", False)
    assert matcher.feed("b") == ("", False)
    assert matcher.feed("d") == ("abd", False)
    assert matcher.feed("x") == ("", False)
    assert matcher.finish() == "x"
    assert matcher.feed("zzab") == ("zz", False)
    assert matcher.feed("cdef") == ("", True)
    assert StopStringMatcher([]).feed("abc") == ("abc", False)


def test_seeded_sampling_reproduces_a_generation():
    target = text_target()
    params = SamplingParams(temperature=0.9, seed=123)
    runs = [generate(speculative(target), tokenizer(), PROMPT, 40, sampling=params).run().tokens for _ in range(2)]
    assert runs[0] == runs[1]


def test_a_generation_runs_once():
    generation = generate(text_target(), tokenizer(), PROMPT, 3)
    generation.run()
    with pytest.raises(GenerationError, match="already run"):
        generation.run()


def test_prompt_is_processed_in_chunks():
    target = text_target()
    prompt = (PROMPT * 40)[:200]
    generate(target, tokenizer(), prompt, 2, prompt_chunk=64).run()
    assert target.forward_sizes[:4] == [64, 64, 64, 7]  # 199 tokens, the last prompt token goes with decoding


@pytest.mark.parametrize("arguments, message", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=10**12), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(prompt_tokens=[]), "empty"),
    (dict(prompt_tokens=[1] * 256), "no room"),
    (dict(prompt_tokens=[1] * 300), "no room"),
    (dict(prompt_tokens=[1, VOCAB]), r"prompt_tokens\[1\]"),
    (dict(prompt_tokens=[1, -3]), r"prompt_tokens\[1\]"),
    (dict(prompt_tokens=[1, "a"]), r"prompt_tokens\[1\]"),
    (dict(stop=["ok", ""]), r"stop\[1\]"),
    (dict(sampling={"temperature": 0.5}), "sampling"),
    (dict(prompt_chunk=0), "prompt_chunk"),
])
def test_bad_arguments_are_refused_before_any_work(arguments, message):
    target = text_target()
    call = dict(prompt_tokens=PROMPT, max_new_tokens=10)
    call.update(arguments)
    with pytest.raises(GenerationError, match=message):
        generate(target, tokenizer(), **call)
    assert target.forward_sizes == []
    assert issubclass(GenerationError, ValueError)


def test_tokenizer_larger_than_the_model_is_refused():
    with pytest.raises(GenerationError, match="tokenizer"):
        generate(text_target(), ByteTokenizer(VOCAB + 1), PROMPT, 5)


def test_model_levels_with_tokenizers_reach_generation():
    target = text_target()
    cascade = Cascade([ModelLevel(target.like(), tokenizer=tokenizer()),
                       ModelLevel(target.like(), tokenizer=tokenizer())], policy="heuristic")
    assert generate(cascade, tokenizer(), PROMPT, 30).run().tokens == reference_greedy(target, PROMPT, 30)


# Real checkpoints: the cascade's greedy output must equal plain decoding with the native decoder too
# (which needs its batch-invariant kernels). Skipped where the decoder or tokenizer branch or the
# checkpoints are missing.

def _real_prompt(tokenizer, request: str) -> list[int]:
    from mlspecqd.apps.chat_template import render_chat
    text = render_chat(tokenizer.chat_template, [{"role": "user", "content": request}], add_generation_prompt=True)
    return tokenizer.encode(text, add_special=True, parse_special=True)


@pytest.mark.real_model
def test_real_ngram_cascade_matches_plain_greedy(qwen_small_path):
    model_module = pytest.importorskip("mlspecqd.engine.model")
    tokenizer_module = pytest.importorskip("mlspecqd.tokenizer")
    tokenizer = tokenizer_module.Tokenizer.from_gguf(qwen_small_path)
    model = model_module.Model.load(qwen_small_path, precision="bf16", context_length=512)
    prompt = _real_prompt(tokenizer, "Write a Python function that reverses the words of a sentence.")
    plain = generate(model, tokenizer, prompt, 24).run()
    cascade = Cascade([NgramDrafter(), ModelLevel(model, tokenizer=tokenizer)], policy="fixed", draft_max=6)
    speculative_result = generate(cascade, tokenizer, prompt, 24).run()
    assert speculative_result.tokens == plain.tokens and speculative_result.text == plain.text
    assert plain.text.strip()


@pytest.mark.real_model
@pytest.mark.slow
def test_real_three_level_cascade_matches_plain_greedy(qwen_small_path, qwen_target_path):
    model_module = pytest.importorskip("mlspecqd.engine.model")
    tokenizer_module = pytest.importorskip("mlspecqd.tokenizer")
    tokenizer = tokenizer_module.Tokenizer.from_gguf(qwen_target_path)
    small_tokenizer = tokenizer_module.Tokenizer.from_gguf(qwen_small_path)
    target = model_module.Model.load(qwen_target_path, precision="bf16", context_length=512)
    small = model_module.Model.load(qwen_small_path, precision="bf16", context_length=512)
    prompt = _real_prompt(tokenizer, "Write a Python function that checks whether a number is prime.")
    plain = generate(target, tokenizer, prompt, 32).run()
    cascade = Cascade([NgramDrafter(), ModelLevel(small, tokenizer=small_tokenizer),
                       ModelLevel(target, tokenizer=tokenizer)], policy="fixed", draft_max=6)
    speculative_result = generate(cascade, tokenizer, prompt, 32).run()
    assert speculative_result.tokens == plain.tokens
    assert speculative_result.timings["levels"][1]["draft_n_accepted"] > 0
