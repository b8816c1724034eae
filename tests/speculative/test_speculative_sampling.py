"""Sampling: the cascade's output must follow the target's distribution exactly (a chi-square test
against the enumerated distribution), whatever the levels and the draft lengths; a wrong rejection
rule is caught."""

import dataclasses
import itertools
import math

import numpy as np
import pytest

from mlspecqd.apps.generation import generate
from mlspecqd.engine.sampling import SamplingParams, token_distribution
from mlspecqd.speculative import Cascade, NgramDrafter, verification
from mlspecqd.speculative.policies import ConfidenceCalibration, CostStoppingRule
from support.fake_models import ByteTokenizer, FakeClock, FakeLanguageModel

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
    monkeypatch.setattr(ConfidenceCalibration, "acceptance",
                        lambda calibration, confidence: confidence * (confidence >= 0.7))
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
