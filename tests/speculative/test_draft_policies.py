"""Draft-length policies: the cost policy's choices and stopping rule, its time models and acceptance
estimates, the fixed, heuristic and confidence policies, and their argument checks."""

import numpy as np
import pytest

from mlspecqd.apps.generation import generate
from mlspecqd.apps.repl import format_stats
from mlspecqd.speculative import (
    Cascade,
    ConfidenceDraftLength,
    CostDraftLength,
    FixedDraftLength,
    ForwardTimeModel,
    HeuristicDraftLength,
    NgramDrafter,
    PolicyError,
    TimeModel,
)
from mlspecqd.speculative.policies import AcceptanceByPosition, ConfidenceCalibration
from support.fake_models import ByteTokenizer, FakeClock, FakeLanguageModel, reference_greedy
from support.speculative_fixtures import PROMPT, VOCAB, assert_caches_match_accepted_text, target_model


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
    (small, _), seconds = three_level_run(middle_seconds=(0.030, 0.003))
    assert small["rounds_by_verifier"]["target"] > 0.8 * sum(small["rounds_by_verifier"].values())
    _, chain_seconds = three_level_run(middle_seconds=(0.030, 0.003), skip_levels=False)
    assert seconds < 0.7 * chain_seconds


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
    # A drafter called almost always for 5 tokens, with the spread of a busy machine (that of the MXFP4
    # level of a three-level cascade): a line through these calls prices 6 tokens at 81 ms.
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


def test_verbose_stats_say_which_level_a_draft_was_for_when_levels_were_skipped():
    (small, _), _ = three_level_run(middle_seconds=(0.030, 0.003))
    line = format_stats({"prompt_n": 5, "cache_n": 0, "prompt_ms": 1.0, "predicted_n": 200, "predicted_ms": 1.0,
                         "predicted_per_second": 1.0, "levels": [{**small, "level": 0, "kind": "model"}]})[-1]
    assert "rounds by level drafted for: " in line and f"target {small['rounds_by_verifier']['target']}" in line
