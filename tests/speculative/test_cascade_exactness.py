"""Greedy cascades give the target's output token for token, whatever the levels, policy and cache
state, with every cache on the accepted text; cascades that cannot work are refused. The same equality
holds with native Gemma-3-shaped models, whose sliding windows are shorter than the text."""

import pytest

from mlspecqd.apps.generation import generate
from mlspecqd.engine.model import Model
from mlspecqd.engine.sampling import SamplingParams
from mlspecqd.speculative import Cascade, CascadeError, ModelLevel, NgramDrafter, VocabularyMismatchError
from support.fake_models import ByteTokenizer, FakeLanguageModel, reference_greedy
from support.speculative_fixtures import (
    PROMPT,
    VOCAB,
    assert_caches_match_accepted_text,
    gemma3_native_model,
    gemma3_prompt,
    moe_native_model,
    target_model,
)


def cascade_levels(size: int, target: FakeLanguageModel) -> list:
    """Cascades of 1..4 levels, the n-gram drafter at the bottom from 2 levels on."""
    models = [target.noisy(2.0, seed=3), target.noisy(1.0, seed=4)][: max(size - 2, 0)]
    return ([NgramDrafter()] if size >= 2 else []) + models + [target.like()]


@pytest.mark.parametrize("policy", ["cost", "fixed", "heuristic", "confidence"])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_greedy_cascade_is_bit_identical_to_plain_decoding(size, policy):
    target = target_model()
    expected = reference_greedy(target, PROMPT, 150)
    cascade = Cascade(cascade_levels(size, target), policy=policy, draft_max=6)
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 150).run()
    assert result.tokens == expected
    assert result.finish_reason == "length"
    assert_caches_match_accepted_text(cascade, PROMPT + result.tokens)
    if size >= 2 and policy != "cost":  # the cost policy may rightly switch drafting off on fake models
        assert result.timings["levels"][-2]["draft_n_accepted"] > 0


def test_greedy_cascade_with_repeat_penalty_matches_plain_decoding():
    target = target_model()
    params = SamplingParams.greedy(repeat_penalty=1.5, repeat_last_n=8)
    expected = reference_greedy(target, PROMPT, 120, params=params)
    cascade = Cascade(cascade_levels(4, target), policy="fixed", draft_max=5)
    assert generate(cascade, ByteTokenizer(VOCAB), PROMPT, 120, sampling=params).run().tokens == expected


def test_always_wrong_draft_still_gives_the_target_output():
    target = target_model()
    cascade = Cascade([target.opposite(), target.like()], policy="fixed", draft_max=4)
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 60).run()
    assert result.tokens == reference_greedy(target, PROMPT, 60)
    draft = result.timings["levels"][0]
    assert draft["draft_n"] > 0 and draft["draft_n_accepted"] == 0
    assert_caches_match_accepted_text(cascade, PROMPT + result.tokens)


def test_always_right_draft_is_fully_accepted():
    target = target_model()
    cascade = Cascade([target.like(), target.like()], policy="fixed", draft_max=4)
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 61).run()
    assert result.tokens == reference_greedy(target, PROMPT, 61)
    draft, top = result.timings["levels"]
    assert draft["draft_n"] == draft["draft_n_accepted"] == 48
    assert draft["acceptance_by_position"] == [1.0] * 4
    assert top["verify_rounds"] == 13 and top["tokens_per_verify_round"] == 61 / 13


def test_end_of_generation_inside_a_draft_stops_there():
    eos = VOCAB - 1
    target = target_model(eos_id=eos, eos_at=len(PROMPT) + 11)
    proposals = []
    draft = ModelLevel(target.like())
    original_propose = draft.propose

    def spy(sequence, count, decoding, *args, **kwargs):
        proposal = original_propose(sequence, count, decoding, *args, **kwargs)
        proposals.append(list(proposal.tokens))
        return proposal

    draft.propose = spy
    cascade = Cascade([draft, target.like()], policy="fixed", draft_max=8)
    rounds = []
    target_step = cascade.target.step

    def recording_step(*arguments):
        rounds.append(target_step(*arguments))
        return rounds[-1]

    cascade.target.step = recording_step
    result = generate(cascade, ByteTokenizer(VOCAB, eos_id=eos), PROMPT, 100).run()
    expected = reference_greedy(target, PROMPT, 100, end_ids=[eos])
    assert result.tokens == expected and expected[-1] == eos and len(expected) == 12
    assert result.finish_reason == "stop"
    assert any(eos in proposal[:-1] or proposal[-1] == eos for proposal in proposals)
    assert all(eos not in proposal[:-1] for proposal in proposals)  # drafting stops at the end token
    assert rounds[-1].tokens[-1] == eos and rounds[-1].tokens.count(eos) == 1  # verification stops there too
    assert_caches_match_accepted_text(cascade, PROMPT + result.tokens)


def test_draft_with_a_smaller_context_stops_drafting_but_not_the_output():
    target = target_model()
    cascade = Cascade([target.like(context_length=40), target.like()], policy="fixed", draft_max=4)
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 80).run()
    assert result.tokens == reference_greedy(target, PROMPT, 80)
    assert cascade.levels[0].model.n_past <= 40


def test_models_shared_by_cascades_in_turn_give_the_right_output():
    target = target_model()
    shared = target.like()
    first, second = Cascade([NgramDrafter(), shared]), Cascade([shared])
    tokenizer = ByteTokenizer(VOCAB)
    run = generate(first, tokenizer, PROMPT, 10).run()
    other = generate(second, tokenizer, PROMPT[:-1] + [9], 10).run()
    # The shared model now holds as many tokens as `first` believes it holds, but other ones.
    assert shared.n_past == len(first.target._cached) and run.tokens[-3:] != other.tokens[-3:]
    follow_up = PROMPT + run.tokens
    assert generate(first, tokenizer, follow_up, 10).run().tokens == reference_greedy(target, follow_up, 10)


def test_cache_is_reused_by_a_following_generation():
    target = target_model()
    cascade = Cascade(cascade_levels(3, target), policy="fixed", draft_max=4)
    first = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 30).run()
    follow_up = PROMPT + first.tokens + [7, 8]
    second = generate(cascade, ByteTokenizer(VOCAB), follow_up, 30).run()
    assert second.tokens == reference_greedy(target, follow_up, 30)
    assert second.timings["cache_n"] >= len(PROMPT) + 20
    assert second.timings["prompt_n"] == len(follow_up) - second.timings["cache_n"]
    assert_caches_match_accepted_text(cascade, follow_up + second.tokens)


# Native Gemma-3-shaped models: real kernels, sliding-window layers, drafts that are sometimes wrong.

def gemma3_levels(target: Model, drafts: str) -> list:
    """The target's own MXFP4 copy (its linear layers and LM head cast), a second Gemma model on other
    weights, and the n-gram drafter, as `drafts` names them (smallest first)."""
    made = {"ngram": NgramDrafter, "mxfp4": lambda: target.sibling("mxfp4"),
            "other": lambda: gemma3_native_model(seed=5)}
    return [made[name]() for name in drafts.split("+")] + [target]


@pytest.mark.parametrize("policy", ["cost", "fixed"])
@pytest.mark.parametrize("drafts", ["mxfp4", "ngram+mxfp4", "other+mxfp4", "ngram+other+mxfp4"])
def test_greedy_cascade_of_native_gemma3_models_is_plain_decoding(drafts, policy):
    """Every token equals plain greedy decoding of the target (a separate model on the same weights),
    the prompt prefilled in chunks of 16 and the text running to 20 times the sliding window."""
    plain_model = gemma3_native_model()
    prompt = gemma3_prompt()
    tokenizer = ByteTokenizer(plain_model.vocab_size)
    plain = generate(plain_model, tokenizer, prompt, 140, prompt_chunk=16).run()
    target = gemma3_native_model()
    cascade = Cascade(gemma3_levels(target, drafts), policy=policy, draft_max=6)
    result = generate(cascade, tokenizer, prompt, 140, prompt_chunk=16).run()
    assert result.tokens == plain.tokens
    assert target.n_past >= len(prompt) + len(result.tokens) - 1
    levels = result.timings["levels"]
    if policy == "fixed":  # drafts were made, and some of them rejected, so verification did real work
        assert 0 < levels[-2]["draft_n_accepted"] < levels[-2]["draft_n"]


# Native Mixture-of-Experts targets: verification batches route their rows to experts together, and
# every row must still get the bits it gets alone.

@pytest.mark.parametrize("policy", ["cost", "fixed"])
@pytest.mark.parametrize("architecture", ["qwen2moe", "qwen3moe", "mixtral"])
def test_greedy_cascade_on_a_native_moe_target_is_plain_decoding(architecture, policy):
    plain_model = moe_native_model(architecture)
    prompt = gemma3_prompt()
    tokenizer = ByteTokenizer(plain_model.vocab_size)
    plain = generate(plain_model, tokenizer, prompt, 120, prompt_chunk=16).run()
    target = moe_native_model(architecture)
    cascade = Cascade([NgramDrafter(), target.sibling("mxfp4"), target], policy=policy, draft_max=6)
    result = generate(cascade, tokenizer, prompt, 120, prompt_chunk=16).run()
    assert result.tokens == plain.tokens
    levels = result.timings["levels"]
    if policy == "fixed":  # drafts were made, and some of them rejected, so verification did real work
        assert 0 < levels[-2]["draft_n_accepted"] < levels[-2]["draft_n"]


# Building cascades.

def test_vocabulary_mismatch_is_refused():
    with pytest.raises(VocabularyMismatchError, match="65 logits"):
        Cascade([FakeLanguageModel(vocab_size=65), FakeLanguageModel(vocab_size=64)])
    draft = ModelLevel(FakeLanguageModel(), tokenizer=ByteTokenizer(64, eos_id=3))
    target = ModelLevel(FakeLanguageModel(), tokenizer=ByteTokenizer(64, eos_id=4))
    with pytest.raises(VocabularyMismatchError, match="eos 3 vs 4"):
        Cascade([draft, target])
    same = Cascade([ModelLevel(FakeLanguageModel(), tokenizer=ByteTokenizer(64)),
                    ModelLevel(FakeLanguageModel(), tokenizer=ByteTokenizer(64))])
    assert [level.name for level in same.levels] == ["draft1", "target"]


def test_bad_cascades_are_refused():
    with pytest.raises(CascadeError, match="at least one level"):
        Cascade([])
    with pytest.raises(CascadeError, match="must be a model"):
        Cascade([FakeLanguageModel(), NgramDrafter()])
    with pytest.raises(CascadeError, match="bottom level"):
        Cascade([FakeLanguageModel(), NgramDrafter(), FakeLanguageModel()])
    with pytest.raises(CascadeError, match="neither a Level nor a language model"):
        Cascade(["model.gguf"])
    shared = FakeLanguageModel()
    with pytest.raises(CascadeError, match="same model object"):
        Cascade([shared, shared])
    level = ModelLevel(FakeLanguageModel())
    Cascade([level])
    with pytest.raises(CascadeError, match="already belongs"):
        Cascade([level])

