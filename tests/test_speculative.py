import dataclasses
import itertools
import math

import numpy as np
import pytest
from fake_models import ByteTokenizer, FakeClock, FakeLanguageModel, reference_greedy

from mlspecqd.apps.generation import generate
from mlspecqd.apps.repl import format_stats
from mlspecqd.engine.sampling import Sampler, SamplingParams, token_distribution
from mlspecqd.speculative import (
    Cascade,
    CascadeError,
    ConfidenceDraftLength,
    CostDraftLength,
    Decoding,
    FixedDraftLength,
    ForwardTimeModel,
    HeuristicDraftLength,
    ModelLevel,
    NgramDrafter,
    PolicyError,
    TimeModel,
    VocabularyMismatchError,
    verification,
)
from mlspecqd.speculative.policies import AcceptanceByPosition, ConfidenceCalibration, CostStoppingRule

VOCAB = 64
PROMPT = [1, 2, 3, 4, 5]


def target_model(**changes) -> FakeLanguageModel:
    return FakeLanguageModel(vocab_size=VOCAB, context_length=400, seed=0, **changes)


def cascade_levels(size: int, target: FakeLanguageModel) -> list:
    """Cascades of 1..4 levels, the n-gram drafter at the bottom from 2 levels on."""
    models = [target.noisy(2.0, seed=3), target.noisy(1.0, seed=4)][: max(size - 2, 0)]
    return ([NgramDrafter()] if size >= 2 else []) + models + [target.like()]


def assert_caches_match_accepted_text(cascade: Cascade, sequence: list[int]) -> None:
    for level in cascade.levels:
        if isinstance(level, ModelLevel):
            model = level.model
            assert model.n_past <= len(sequence)
            assert model.cache == model.fresh_cache(sequence[: model.n_past]), level.name


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


# Sampling: the cascade's output must follow the target's distribution exactly.

SMALL_VOCAB = 4
SAMPLED_PROMPT = [1, 2, 3, 1, 2]
SAMPLED_LENGTH = 3
SAMPLES = 2500
SAMPLING_CASES = {
    "softmax": SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    "truncated": SamplingParams(temperature=0.8, top_k=3, top_p=0.9, min_p=0.1, repeat_penalty=1.3, repeat_last_n=4),
}


def small_models():
    target = FakeLanguageModel(vocab_size=SMALL_VOCAB, order=2, seed=11, scale=1.5)
    small = FakeLanguageModel(vocab_size=SMALL_VOCAB, order=1, seed=12, scale=1.5)
    middle = target.noisy(1.5, seed=13)
    return target, small, middle


def exact_sequence_distribution(model, params):
    """P(sequence) for every continuation of SAMPLED_LENGTH tokens, by enumeration."""
    probabilities = {}
    for continuation in itertools.product(range(SMALL_VOCAB), repeat=SAMPLED_LENGTH):
        sequence, probability = list(SAMPLED_PROMPT), 1.0
        for token in continuation:
            recent = sequence[-params.repeat_last_n :] if params.repeat_last_n else []
            probability *= token_distribution(model.logits_for(sequence), params, recent).probability(token)
            sequence.append(token)
        probabilities[continuation] = probability
    return probabilities


def chi_square_p_value(counts, probabilities, samples):
    """Pearson's test, cells expected below 5 pooled; p from the Wilson-Hilferty normal approximation."""
    observed, expected, pooled_observed, pooled_expected = [], [], 0, 0.0
    for cell, probability in probabilities.items():
        if probability * samples < 5:
            pooled_observed += counts.get(cell, 0)
            pooled_expected += probability * samples
        else:
            observed.append(counts.get(cell, 0))
            expected.append(probability * samples)
    if pooled_expected > 0:
        observed.append(pooled_observed)
        expected.append(pooled_expected)
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    freedom = len(observed) - 1
    z = ((statistic / freedom) ** (1 / 3) - (1 - 2 / (9 * freedom))) / math.sqrt(2 / (9 * freedom))
    return 0.5 * math.erfc(z / math.sqrt(2))


def sampled_counts(levels, params, draft_max=2):
    """Counts of each sampled continuation, and (drafted, accepted) totals of the level below the target."""
    cascade = Cascade(levels, policy="fixed", draft_max=draft_max)
    tokenizer = ByteTokenizer(SMALL_VOCAB)
    counts, drafted, accepted = {}, 0, 0
    for seed in range(SAMPLES):
        sampling = dataclasses.replace(params, seed=seed)
        result = generate(cascade, tokenizer, SAMPLED_PROMPT, SAMPLED_LENGTH, sampling=sampling).run()
        counts[tuple(result.tokens)] = counts.get(tuple(result.tokens), 0) + 1
        drafted += result.timings["draft_n"]
        accepted += result.timings["draft_n_accepted"]
    return counts, (drafted, accepted)


def sampled_levels(size):
    target, small, middle = small_models()
    return [[target], [small, target], [small, middle, target], [NgramDrafter(), small, middle, target]][size - 1]


@pytest.mark.parametrize("case", sorted(SAMPLING_CASES))
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_sampled_sequences_follow_the_target_distribution(size, case):
    params = SAMPLING_CASES[case]
    exact = exact_sequence_distribution(small_models()[0], params)
    counts, (drafted, accepted) = sampled_counts(sampled_levels(size), params)
    assert sum(counts.values()) == SAMPLES
    assert chi_square_p_value(counts, exact, SAMPLES) > 1e-3
    if size >= 2:  # the test means something only if drafts are both accepted and rejected
        assert 0.2 * drafted < accepted < 0.9 * drafted


def test_sampled_sequences_follow_the_target_distribution_when_the_middle_level_is_skipped():
    # Costs that make the middle level about as dear as stepping around it: the cost policy takes both
    # routes, and every round must still be exact speculative sampling.
    clock = FakeClock()
    target, small, middle = small_models()
    levels = [small.like(clock=clock, call_seconds=0.001), middle.like(clock=clock, call_seconds=0.002),
              target.like(clock=clock, call_seconds=0.020)]
    params = SAMPLING_CASES["truncated"]
    cascade = Cascade(levels, policy="cost", draft_max=2, clock=clock)
    counts, routes = {}, {}
    for seed in range(SAMPLES):
        result = generate(cascade, ByteTokenizer(SMALL_VOCAB), SAMPLED_PROMPT, SAMPLED_LENGTH,
                          sampling=dataclasses.replace(params, seed=seed)).run()
        counts[tuple(result.tokens)] = counts.get(tuple(result.tokens), 0) + 1
        for verifier, rounds in result.timings["levels"][0]["rounds_by_verifier"].items():
            routes[verifier] = routes.get(verifier, 0) + rounds
    assert min(routes.get("draft2", 0), routes.get("target", 0)) > 100, routes
    assert chi_square_p_value(counts, exact_sequence_distribution(target, params), SAMPLES) > 1e-3


def test_sampled_sequences_follow_the_target_distribution_when_the_cost_policy_stops_drafts_early(monkeypatch):
    # The cost policy's stopping rule drops tokens by their confidence; sampling must stay exact.
    decisions = []
    keep = CostStoppingRule.keep

    def recorded_keep(rule, confidence):
        decisions.append(keep(rule, confidence))
        return decisions[-1]

    monkeypatch.setattr(CostStoppingRule, "keep", recorded_keep)
    # A calibration that has learned that the less sure drafts are never accepted: the rule drops every
    # draft token below 0.7 confidence (the small model's are 0.57 or 0.80 here).
    monkeypatch.setattr(ConfidenceCalibration, "acceptance", lambda calibration, confidence: confidence * (confidence >= 0.7))
    clock = FakeClock()
    target, small, _ = small_models()
    # A round's fixed part dominates, as on a CPU that reads the weights once per forward: drafting pays.
    levels = [small.like(clock=clock, call_seconds=0.001),
              target.like(clock=clock, call_seconds=0.030, token_seconds=0.003)]
    cascade = Cascade(levels, policy="cost", draft_max=4, clock=clock)
    params = SAMPLING_CASES["softmax"]
    counts = {}
    for seed in range(SAMPLES):
        result = generate(cascade, ByteTokenizer(SMALL_VOCAB), SAMPLED_PROMPT, SAMPLED_LENGTH,
                          sampling=dataclasses.replace(params, seed=seed)).run()
        counts[tuple(result.tokens)] = counts.get(tuple(result.tokens), 0) + 1
    assert decisions.count(False) > 200 and decisions.count(True) > 200, decisions.count(False)
    assert chi_square_p_value(counts, exact_sequence_distribution(target, params), SAMPLES) > 1e-3


def test_sampled_runs_are_reproducible_with_a_seed():
    target, small, _ = small_models()
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5)
    runs = [generate(Cascade([small.like(), target.like()], policy="fixed", draft_max=3), ByteTokenizer(SMALL_VOCAB),
                     SAMPLED_PROMPT, 40, sampling=params).run().tokens for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("wrong_residual", [
    lambda p, q, token: p.dense(),  # resample from p itself: over-weights the draft's favourites
    lambda p, q, token: np.maximum(q.dense() - p.dense(), 0.0) + 1e-9,  # residual turned around
])
def test_negative_control_a_wrong_rejection_rule_is_caught(monkeypatch, wrong_residual):
    params = SAMPLING_CASES["softmax"]
    exact = exact_sequence_distribution(small_models()[0], params)
    monkeypatch.setattr(verification, "residual_distribution", wrong_residual)
    counts, _ = sampled_counts(sampled_levels(2), params)
    assert chi_square_p_value(counts, exact, SAMPLES) < 1e-6


# Draft-length policies.

def test_cost_policy_switches_off_a_useless_slow_draft():
    clock = FakeClock()
    target = target_model(clock=clock, call_seconds=0.010, token_seconds=0.001)
    draft = target.opposite(call_seconds=0.020, token_seconds=0.001)
    cascade = Cascade([draft, target.like()], policy="cost", draft_max=8, clock=clock)
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 150).run()
    assert result.tokens == reference_greedy(target, PROMPT, 150)
    choices = result.timings["levels"][0]["draft_length_choices"]
    rounds = sum(choices.values())
    assert choices[0] >= 0.85 * rounds  # the rest: the warm-up round and the occasional probe of one token
    assert set(choices) <= {0, 1, 4}


def test_cost_policy_drafts_long_with_a_cheap_accurate_draft():
    clock = FakeClock()
    target = target_model(clock=clock, call_seconds=0.010, token_seconds=0.001)
    draft = target.like(call_seconds=0.0005, token_seconds=0.0001)
    cascade = Cascade([draft, target.like()], policy="cost", draft_max=8, clock=clock)
    warm_up = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 150).run()
    assert min(warm_up.timings["levels"][0]["draft_length_choices"]) >= 3  # never switched off
    # What the policy learned stays with the cascade for the next request.
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 150).run()
    choices = result.timings["levels"][0]["draft_length_choices"]
    assert choices.get(8, 0) >= 0.8 * sum(choices.values())
    assert result.timings["levels"][1]["tokens_per_verify_round"] > 6


def three_level_run(middle_seconds, skip_levels=True):
    """A three-level greedy run on fake models: checks the output and the caches; returns the stats
    of the two drafting levels and the simulated seconds the 200 tokens took."""
    clock = FakeClock()
    target = target_model(clock=clock, call_seconds=0.050, token_seconds=0.002)
    middle = target.noisy(0.3, seed=4, call_seconds=middle_seconds[0], token_seconds=middle_seconds[1])
    small = target.noisy(0.8, seed=5, call_seconds=0.001, token_seconds=0.0001)
    cascade = Cascade([small, middle, target.like()], policy="cost", draft_max=8, skip_levels=skip_levels,
                      clock=clock)
    started = clock.seconds
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 200).run()
    assert result.tokens == reference_greedy(target, PROMPT, 200)
    assert_caches_match_accepted_text(cascade, PROMPT + result.tokens)
    return result.timings["levels"][:2], clock.seconds - started


def test_cost_policy_in_a_three_level_cascade_uses_a_middle_level_that_pays():
    (small, middle), _ = three_level_run(middle_seconds=(0.005, 0.0005))
    for level in (small, middle):
        assert level["draft_n_accepted"] > 50, level
    assert small["rounds_by_verifier"]["draft2"] > 2 / 3 * sum(small["rounds_by_verifier"].values())


def test_cost_policy_steps_around_a_middle_level_that_does_not_pay():
    # The middle level costs 60% of the target: the small level drafting for the target directly is
    # faster than through it.
    (small, middle), seconds = three_level_run(middle_seconds=(0.030, 0.003))
    assert small["rounds_by_verifier"]["target"] > 0.8 * sum(small["rounds_by_verifier"].values())
    _, chain_seconds = three_level_run(middle_seconds=(0.030, 0.003), skip_levels=False)
    assert seconds < 0.7 * chain_seconds


def test_a_drafter_that_sat_a_prompt_out_is_prefilled_only_every_few_prompts():
    clock = FakeClock()
    target = target_model(clock=clock, call_seconds=0.050, token_seconds=0.002)
    middle = target.noisy(0.3, seed=4, call_seconds=0.005, token_seconds=0.0005)
    small = target.noisy(0.8, seed=5, call_seconds=0.001, token_seconds=0.0001)
    cascade = Cascade([small, middle, target.like()], policy="cost", clock=clock)
    cascade.prefill_all_every = 3
    prompts = [PROMPT + [i] * 6 + [7] for i in range(4)]
    prefilled = []
    for prompt in prompts:
        cascade.levels[1].drafted_since_prefill = False  # as if it had sat the last generation out
        cascade.prefill(prompt)
        prefilled.append(middle.n_past == len(prompt) - 1)
        assert middle.cache == middle.fresh_cache(prompt[: middle.n_past])  # a prefix of the new text only
    assert prefilled == [True, False, False, True]
    # Called on after a prompt it was not prefilled with, the middle level catches up: same output.
    cascade.levels[1].drafted_since_prefill = False
    result = generate(cascade, ByteTokenizer(VOCAB), prompts[1], 100).run()
    assert result.tokens == reference_greedy(target, prompts[1], 100)
    assert result.timings["levels"][1]["draft_n_accepted"] > 20
    assert_caches_match_accepted_text(cascade, prompts[1] + result.tokens)


def test_a_drafter_catching_up_after_a_pause_does_not_price_its_drafts_by_it():
    # A draft that sat out rounds must first forward the tokens it missed. Priced into its proposals,
    # that made every probe after a pause look too dear to resume drafting.
    clock = FakeClock()
    target = target_model(clock=clock, call_seconds=0.010, token_seconds=0.001)
    draft = ModelLevel(target.like(call_seconds=0.001, token_seconds=0.002))
    Cascade([draft, target.like()], policy="cost", clock=clock)
    decoding = Decoding(Sampler(SamplingParams(temperature=0.0)), frozenset())
    draft.prefill(PROMPT)
    in_step = PROMPT + [7]  # one token (the verifier's own) the draft has not seen
    draft.propose(in_step, 2, decoding)
    assert draft.proposal_timing.sample_count == 1
    after_pause = in_step + [9] * 20  # 20 tokens from rounds it sat out
    proposal = draft.propose(after_pause, 2, decoding)
    assert len(proposal) == 2  # it drafted, caught up ...
    assert draft.model.n_past == len(after_pause) + 1
    assert draft.proposal_timing.sample_count == 1  # ... and its draft price is still the in-step one


class KeepFirst:
    """A stopping rule that keeps the first `count` drafted tokens and drops the next."""

    def __init__(self, count: int) -> None:
        self.left = count

    def draft_more(self) -> bool:
        return True

    def keep(self, confidence: float) -> bool:
        self.left -= 1
        return self.left >= 0


def test_a_drafter_prices_the_token_its_stopping_rule_dropped():
    # A token drafted and then dropped cost its forward as a kept one did: a proposal is priced by
    # every token drafted, or dropping one makes drafting look 1.5x dearer per token than it is.
    clock = FakeClock()
    target = target_model(clock=clock)
    draft = ModelLevel(target.like(call_seconds=0.001))
    Cascade([draft, target.like()], policy="cost", clock=clock)
    decoding = Decoding(Sampler(SamplingParams(temperature=0.0)), frozenset())
    draft.prefill(PROMPT)
    proposal = draft.propose(PROMPT + [7], 4, decoding, stopping=KeepFirst(2))
    assert len(proposal) == 2
    assert draft.proposal_timing.estimate(3) == pytest.approx(0.003)  # three forwards, three tokens drafted


def test_cost_policy_choice_from_measurements():
    verifier, cheap_drafter, slow_drafter = TimeModel(), TimeModel(1.0), TimeModel(1.0)
    for tokens in (1, 5, 9):
        verifier.record(tokens, 0.010 + 0.001 * tokens)
        cheap_drafter.record(tokens, 0.0005 * tokens)
        slow_drafter.record(tokens, 0.005 * tokens)
    assert verifier.estimate(3) == pytest.approx(0.013)
    accurate, useless = CostDraftLength(8), CostDraftLength(8)
    for _ in range(30):
        accurate.record(8, 8)
        useless.record(4, 0)
    assert accurate.choose(cheap_drafter, verifier) == 8
    assert useless.choose(slow_drafter, verifier) == 0
    zero_rounds = [useless.choose(slow_drafter, verifier) for _ in range(40)]
    assert 1 in zero_rounds and zero_rounds.count(0) >= 36  # re-probes, now and then
    assert CostDraftLength(8, initial=3).choose(TimeModel(1.0), verifier) == 3  # not measured: warm-up
    assert CostDraftLength(8, initial=3, warm_up=4).choose(cheap_drafter, verifier) == 3  # 3 calls: still warming
    # A half-accurate draft pays only for short drafts when drafting costs about what verifying does:
    # the plan is short, and the round, which may run to draft_max, is ended there by its stopping rule.
    half = CostDraftLength(8)
    for _ in range(30):
        half.record(2, 1)
    assert 1 <= half.plan(cheap_drafter, verifier)[0] <= 3
    assert half.choose(cheap_drafter, verifier) == 8
    assert 1 <= sure_tokens_drafted(half.stopping_rule(cheap_drafter, verifier)) <= 3


def sure_tokens_drafted(rule, draft_max: int = 8) -> int:
    """How many tokens of confidence 0.97 a round drafts under `rule`."""
    drafted = 0
    while drafted < draft_max and rule.draft_more() and rule.keep(0.97):
        drafted += 1
    return drafted


def test_confidence_calibration_learns_the_acceptance_of_each_confidence():
    calibration = ConfidenceCalibration()
    assert calibration.acceptance(0.3) == pytest.approx(0.3)  # before any round: taken at its word
    rng = np.random.default_rng(0)
    for _ in range(2000):
        calibration.record(0.97, rng.random() < 0.9)  # a little overconfident
        calibration.record(0.45, False)  # never right when unsure
    assert calibration.acceptance(0.96) == pytest.approx(0.9, abs=0.06)
    assert calibration.acceptance(0.45) < 0.05
    assert calibration.acceptance(0.75) == pytest.approx(0.75)  # a bin never seen keeps its prior


def trained_cost_policy(verifier: TimeModel, drafter: TimeModel, stop_early: bool = True) -> CostDraftLength:
    """A cost policy that has seen rounds in which sure tokens (0.97) were accepted and unsure ones
    (0.45) rejected, with the times of a 10 ms verifier and a 1 ms-a-token drafter."""
    for tokens in (1, 5, 9):
        verifier.record(tokens, 0.010 + 0.0002 * tokens)
        drafter.record(tokens, 0.001 * tokens)
    policy = CostDraftLength(8, stop_early=stop_early)
    for _ in range(40):
        policy.record(8, 8, [0.97] * 8)
        policy.record(3, 2, [0.97, 0.97, 0.45])
    return policy


def test_cost_stopping_rule_runs_on_while_sure_and_drops_the_first_doubtful_token():
    verifier, drafter = TimeModel(), TimeModel(1.0)
    policy = trained_cost_policy(verifier, drafter)
    assert policy.choose(drafter, verifier) == 8  # drafting pays: up to draft_max ...
    assert sure_tokens_drafted(policy.stopping_rule(drafter, verifier)) >= 6  # ... as long as the tokens are sure
    rule = policy.stopping_rule(drafter, verifier)
    assert [rule.keep(c) for c in (0.97, 0.97, 0.45)] == [True, True, False]  # ... and not past a doubtful one
    assert policy.stopping_rule(drafter, verifier).draft_more()


def test_cost_stopping_rule_stops_when_drafting_is_dear():
    verifier, drafter = TimeModel(), TimeModel(1.0)
    policy = trained_cost_policy(verifier, drafter)
    dear = TimeModel(1.0)
    for tokens in (1, 5, 9):
        dear.record(tokens, 0.005 * tokens)  # half a verification per drafted token
    assert policy.choose(dear, verifier) == 8
    assert 1 <= sure_tokens_drafted(policy.stopping_rule(dear, verifier)) <= 3
    planned_only = trained_cost_policy(TimeModel(), TimeModel(1.0), stop_early=False)
    assert planned_only.choose(dear, verifier) == planned_only.plan(dear, verifier)[0] == 2
    assert planned_only.stopping_rule(dear, verifier) is None


def test_policies_without_confidence_draft_what_they_chose():
    verifier, drafter = TimeModel(), TimeModel(1.0)
    assert FixedDraftLength(4).stopping_rule(drafter, verifier) is None
    assert not FixedDraftLength(4).uses_confidence
    assert CostDraftLength(8).stopping_rule(drafter, verifier) is None  # nothing planned yet
    rule = ConfidenceDraftLength(8, threshold=0.6).stopping_rule(drafter, verifier)
    assert rule.draft_more() and rule.keep(0.6) and not rule.keep(0.59)


def test_time_model_prior_until_sizes_spread_then_least_squares():
    verifier = TimeModel(extra_token_share=1 / 8)
    verifier.record(1, 0.016)
    assert verifier.estimate(1) == pytest.approx(0.016)
    assert verifier.estimate(9) == pytest.approx(0.016 * 2)  # each extra token 1/8 of the first
    verifier.record(2, 0.040)  # sizes one apart: still the prior, through the mean
    assert verifier.estimate(1.5) == pytest.approx(0.028)
    verifier.record(3, 0.030)
    assert verifier.estimate(2) == pytest.approx(0.086 / 3)
    drafter = TimeModel(extra_token_share=1.0)
    drafter.record(4, 0.008)
    assert drafter.estimate(2) == pytest.approx(0.004)  # a drafter's time is proportional to its tokens


def test_time_model_uses_measured_sizes_where_a_line_cannot_fit_the_steps():
    # A forward flat up to 4 tokens, then growing by 4 ms a token (dot products, not memory, bound it).
    def measured(tokens: int) -> float:
        return 0.064 + 0.004 * max(tokens - 4, 0)

    verifier = TimeModel()
    line = TimeModel(measured_at_size=10**9)  # the same calls, the line alone
    for tokens in (1, 3, 9) * 3 + (5,):  # 5 once: not enough to trust on its own
        verifier.record(tokens, measured(tokens))
        line.record(tokens, measured(tokens))
    assert verifier.estimate(1) == pytest.approx(measured(1))
    assert verifier.estimate(9) == pytest.approx(measured(9))
    assert verifier.estimate(5) == pytest.approx(measured(3) + (measured(9) - measured(3)) * 2 / 6)  # between
    assert verifier.estimate(12) == pytest.approx(measured(9) * (1 + 11 / 32) / (1 + 8 / 32))  # beyond: prior shape
    assert measured(1) - line.estimate(1) > 0.002  # the line puts one token too low
    # The median of the recent calls at a size: one disturbed call does not move it.
    verifier.record(1, 1.0)
    assert verifier.estimate(1) == pytest.approx(measured(1))


def test_time_model_extrapolates_from_the_nearest_measured_size_not_a_noisy_line():
    # A drafter called almost always for 5 tokens, with the spread of a busy machine (as measured for
    # the MXFP4 level of a three-level cascade): a line through these calls prices 6 tokens at 81 ms.
    drafter = TimeModel(extra_token_share=1.0)
    drafter.record(3, 0.0389)
    drafter.record(4, 0.0435)
    drafter.record(4, 0.0482)
    for seconds in np.linspace(0.049, 0.090, 45):
        drafter.record(5, float(seconds))
    five = float(np.median(np.linspace(0.049, 0.090, 45)[-5:]))
    assert drafter.estimate(5) == pytest.approx(five)
    assert drafter.estimate(6) == pytest.approx(five * 6 / 5)
    assert drafter.estimate(8) == pytest.approx(five * 8 / 5)


def test_forward_time_model_keeps_the_shape_of_sizes_apart_from_the_speed_of_the_machine():
    # The machine's memory flips between a fast and a slow speed within seconds; a forward's time is
    # the speed times the shape of its size.
    def shape(tokens: int) -> float:
        return 0.050 * (1 + 0.04 * (tokens - 1))

    verifier, per_size = ForwardTimeModel(), TimeModel()
    rng = np.random.default_rng(3)
    calls = [(int(tokens), speed) for speed in (1.0, 1.5) for tokens in rng.integers(5, 8, size=14)]
    calls += [(5, 1.0)] * 10  # fast again, and only 5 tokens called: 6 and 7 were last timed slow
    for tokens, speed in calls:
        verifier.record(tokens, speed * shape(tokens))
        per_size.record(tokens, speed * shape(tokens))
    for tokens in (5, 6, 7):
        assert verifier.estimate(tokens) == pytest.approx(shape(tokens), rel=1e-3)
    # What the stopping rule prices a sixth verified token at: the medians per size make it 16 times dear.
    assert verifier.estimate(6) - verifier.estimate(5) == pytest.approx(shape(6) - shape(5), rel=1e-3)
    assert per_size.estimate(6) - per_size.estimate(5) > 10 * (shape(6) - shape(5))
    for _ in range(3):  # slow again: the majority of the last five calls decides the speed
        verifier.record(6, 1.5 * shape(6))
    for tokens in (5, 6, 7):
        assert verifier.estimate(tokens) == pytest.approx(1.5 * shape(tokens), rel=1e-3)
    assert verifier.estimate(9) == pytest.approx(1.5 * shape(9), rel=1e-3)  # one slope for every size
    for tokens in [5, 6] * 30:  # 7 tokens leaves the window of calls; the slope stays
        verifier.record(tokens, shape(tokens))
    assert verifier.estimate(7) == pytest.approx(shape(7), rel=1e-3)


def test_forward_time_model_ignores_a_disturbed_call_and_waits_for_enough_pairs():
    verifier = ForwardTimeModel()
    for tokens, seconds in [(1, 0.050), (5, 0.060)] * 4 + [(1, 0.500), (5, 0.060), (1, 0.050)]:
        verifier.record(tokens, seconds)  # one call ten times slow: two ratios of seven spoiled
    assert verifier.estimate(1) == pytest.approx(0.050)
    assert verifier.estimate(5) == pytest.approx(0.060)
    lone = ForwardTimeModel()
    for tokens, seconds in [(3, 0.040)] * 3 + [(9, 0.070)] * 3:  # one change of size, one ratio: the medians
        lone.record(tokens, seconds)
    assert lone.estimate(3) == pytest.approx(0.040) and lone.estimate(9) == pytest.approx(0.070)
    assert ForwardTimeModel().sample_count == 0


def test_acceptance_of_a_new_position_starts_from_the_position_before_it():
    acceptance = AcceptanceByPosition(8)
    for _ in range(60):
        acceptance.record(5, 5)
    assert acceptance.rates[4] > 0.99
    acceptance.record(6, 6)  # the sixth position, seen once: about as good as the fifth, not the 0.6 prior
    assert acceptance.rates[5] > 0.99
    expected = acceptance.expected_tokens()
    assert expected[8] - expected[5] > 2.9  # three more positions, each nearly sure


def test_heuristic_policy_grows_by_two_and_shrinks_by_one_within_bounds():
    policy = HeuristicDraftLength(6, initial=4)
    unused = TimeModel()
    policy.record(4, 4)
    assert policy.choose(unused, unused) == 6
    policy.record(6, 6)
    assert policy.choose(unused, unused) == 6
    for _ in range(10):
        policy.record(3, 1)
    assert policy.choose(unused, unused) == 1


def test_confidence_policy_stops_an_unsure_draft():
    target = target_model()
    unsure = target.like(table=target.table * 0.01)  # nearly flat: top probability ~ 1/64
    cascade = Cascade([unsure, target.like()], policy="confidence", draft_max=8)
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 40).run()
    assert result.tokens == reference_greedy(target, PROMPT, 40)
    assert result.timings["levels"][0]["draft_n"] == 0
    sure = Cascade([target.like(), target.like()], policy="confidence", draft_max=8)
    assert generate(sure, ByteTokenizer(VOCAB), PROMPT, 40).run().timings["levels"][0]["draft_n"] > 20


@pytest.mark.parametrize("make", [
    lambda: FixedDraftLength(0), lambda: CostDraftLength(-1), lambda: ConfidenceDraftLength(4, threshold=1.5),
    lambda: NgramDrafter(max_n=2, min_n=3), lambda: Cascade([FakeLanguageModel()], policy="fastest"),
])
def test_bad_policy_arguments_are_refused(make):
    with pytest.raises(PolicyError):
        make()


# The n-gram drafter.

def test_ngram_drafter_continues_the_longest_most_recent_match():
    drafter = NgramDrafter(max_n=3)
    sequence = [5, 6, 7, 1, 2, 3, 9, 9, 2, 3, 4, 1, 2, 3]
    assert drafter.find_continuation(sequence, 3) == ([9, 9, 2], 3)
    assert drafter.find_continuation([1, 2, 9, 2, 8, 2], 2) == ([8, 2], 1)
    assert drafter.find_continuation([1, 2, 3], 4) == ([], 0)
    assert drafter.find_continuation([4], 4) == ([], 0)
    assert NgramDrafter(min_n=2).find_continuation([1, 2, 9, 2, 8, 2], 2) == ([], 0)


def test_ngram_drafter_agrees_with_a_brute_force_search():
    def brute_force(sequence, count, max_n):
        for n in range(min(max_n, len(sequence) - 1), 0, -1):
            for start in range(len(sequence) - 1 - n, -1, -1):  # most recent first
                if sequence[start : start + n] == sequence[len(sequence) - n :]:
                    return sequence[start + n : start + n + count], n
        return [], 0

    rng = np.random.default_rng(0)
    for _ in range(500):
        sequence = [int(t) for t in rng.integers(0, 3, rng.integers(1, 20))]
        assert NgramDrafter(max_n=3).find_continuation(sequence, 3) == brute_force(sequence, 3, 3), sequence


def test_ngram_drafter_speeds_up_repetitive_text():
    target = target_model()
    cascade = Cascade([NgramDrafter(), target.like()], policy="fixed", draft_max=8)
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, 200).run()
    top = result.timings["levels"][-1]
    assert top["tokens_per_verify_round"] > 2  # greedy n-gram text falls into a loop the drafter follows


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


def test_verbose_stats_say_which_level_a_draft_was_for_when_levels_were_skipped():
    (small, _), _ = three_level_run(middle_seconds=(0.030, 0.003))
    line = format_stats({"prompt_n": 5, "cache_n": 0, "prompt_ms": 1.0, "predicted_n": 200, "predicted_ms": 1.0,
                         "predicted_per_second": 1.0, "levels": [{**small, "level": 0, "kind": "model"}]})[-1]
    assert "rounds by level drafted for: " in line and f"target {small['rounds_by_verifier']['target']}" in line
