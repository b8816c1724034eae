"""The cost policy on targets with experts: distinct experts per forward size learned from the router
(ExpertActivity), the verifier's time model built on them (ExpertForwardTimeModel), the stopping rule
that looks past an expensive first row, and the choice it makes against a sweep of fixed lengths on a
fake model with experts; on tiny native models, the experts a level measures are the router's."""

import numpy as np
import pytest

from mlspecqd.apps.generation import generate
from mlspecqd.speculative import Cascade, ExpertForwardTimeModel, ForwardTimeModel, ModelLevel, TimeModel
from mlspecqd.speculative.experts import ExpertActivity, routed_expert_share
from mlspecqd.speculative.policies import CostDraftLength, CostStoppingRule
from support.fake_models import ByteTokenizer, FakeClock, FakeExpertModel, reference_greedy
from support.speculative_fixtures import PROMPT, VOCAB, gemma3_native_model, gemma3_prompt, moe_native_model


def uniform(E: int, k: int, T: int) -> float:
    return E * (1.0 - (1.0 - k / E) ** T)


def test_expert_share_counts_k_of_e_experts_and_every_other_weight_but_a_separate_embedding():
    tensors = {"blk.0.ffn_up_exps.weight": np.zeros(800, np.uint8), "blk.0.attn_q.weight": np.zeros(100, np.uint8),
               "output.weight": np.zeros(200, np.uint8), "token_embd.weight": np.zeros(5000, np.uint8)}
    assert routed_expert_share(tensors, 8, 2) == pytest.approx(200 / 500)
    del tensors["output.weight"]  # tied: the embedding is the LM head, read whole
    assert routed_expert_share(tensors, 8, 2) == pytest.approx(200 / 5300)


def test_distinct_experts_are_uniform_until_measured_then_measured_then_scaled_from_the_nearest_size():
    E, k = 16, 2
    activity = ExpertActivity(E, k, expert_share=0.5)
    assert [activity.distinct(T) for T in (1, 4, 9)] == pytest.approx([uniform(E, k, T) for T in (1, 4, 9)])
    assert activity.read_ratio(1) == 1.0
    # Two layers, four-row forwards that share experts: layer 0 reads 3 distinct, layer 1 reads 5.
    routed = np.zeros((2, E), dtype=np.int64)
    routed[0, [0, 1, 2]] = [4, 3, 1]
    routed[1, [0, 1, 2, 3, 4]] = [2, 2, 2, 1, 1]
    for _ in range(5):
        activity.record(4, routed)
    assert activity.measured_sizes() == {4: 4.0}
    assert activity.distinct(4) == 4.0
    assert activity.read_ratio(4) == pytest.approx(1.0 + 0.5 * (4.0 / k - 1.0))
    # Other sizes: independent draws at the measured frequencies, their excess over k scaled as at 4 rows.
    chance = routed / 4
    independent = [float((1.0 - (1.0 - chance) ** T).sum(axis=1).mean()) for T in (4, 8)]
    assert activity.independent(8) == pytest.approx(independent[1])
    scale = (4.0 - k) / (independent[0] - k)
    assert activity.distinct(8) == pytest.approx(k + (independent[1] - k) * scale)
    assert activity.distinct(1) == k
    assert k <= activity.distinct(2) <= 2 * k
    assert activity.distinct(8) < uniform(E, k, 8)  # shared experts: fewer than a uniform router reads
    with pytest.raises(ValueError, match="5 experts used of 4"):
        ExpertActivity(4, 5, expert_share=0.5)


def test_expert_time_model_prices_an_unmeasured_size_by_the_experts_it_reads():
    E, k, share = 64, 4, 0.6
    activity = ExpertActivity(E, k, share)

    def seconds(T: int) -> float:  # reading the bytes bounds the forward; each row adds 1% arithmetic
        return 0.020 * (activity.read_ratio(T) + 0.01 * (T - 1))

    expert, dense = ExpertForwardTimeModel(activity), ForwardTimeModel()
    for _ in range(3):
        expert.record(1, seconds(1))
        dense.record(1, seconds(1))
    # Only one row was ever timed: the dense prior prices 5 rows at 1 + 4/32 of one; the expert prior
    # at what 5 rows read, which is near the truth.
    assert dense.estimate(5) == pytest.approx(seconds(1) * (1 + 4 / 32))
    assert expert.estimate(5) == pytest.approx(seconds(5), rel=0.05)
    assert seconds(5) > 2 * seconds(1)
    # Once consecutive calls of different sizes are in, the arithmetic's slope is fitted apart from the
    # read ratio, and sizes never timed are priced right, while the machine changes speed.
    for index, T in enumerate([2, 3, 2, 3, 2, 3, 2, 3]):
        expert.record(T, (1.5 if index >= 4 else 1.0) * seconds(T))
    for T in (1, 2, 3, 6, 9):
        assert expert.estimate(T) == pytest.approx(1.5 * seconds(T), rel=0.02)


def test_expert_time_model_follows_the_router_as_it_is_measured():
    activity = ExpertActivity(32, 2, 0.5)
    verifier = ExpertForwardTimeModel(activity)
    for _ in range(3):
        verifier.record(1, 0.010)
    before = verifier.estimate(4)
    routed = np.zeros((1, 32), dtype=np.int64)
    routed[0, :2] = 4  # four rows, all on the same two experts
    activity.record(4, routed)
    assert verifier.estimate(4) == pytest.approx(0.010 * (1 + 3 / 32))  # reads no more experts than one row
    assert before > verifier.estimate(4)


def test_stopping_rule_drafts_on_past_a_dear_first_row_that_later_rows_share():
    policy = CostDraftLength(8)
    for _ in range(50):
        policy.record(8, 8)  # drafts nearly always accepted
    drafter = TimeModel(extra_token_share=1.0)
    for _ in range(3):
        drafter.record(1, 0.001)
    verifier = TimeModel()
    for T, seconds in [(1, 0.010), (2, 0.020), (9, 0.024)] * 2:  # the second row reads new experts
        verifier.record(T, seconds)
    rate = 1.0 / 0.010  # what plain decoding gives: one token per 10 ms
    rule = CostStoppingRule(policy, drafter, verifier, rate)
    # The next token alone does not pay for the second row (1 token < 100/s x 11 ms); eight do.
    assert rate * (verifier.estimate(2) - verifier.estimate(1) + 0.001) > 1.0
    assert rule.draft_more()
    assert rule.keep(0.99)
    dear = TimeModel()
    for T, seconds in [(1, 0.010), (2, 0.020), (9, 0.090)] * 2:  # every row as dear as the first
        dear.record(T, seconds)
    assert not CostStoppingRule(policy, drafter, dear, rate).draft_more()


def expert_run(policy: str, draft_max: int, tokens: int = 300) -> tuple[float, dict]:
    """Simulated tokens per second of a greedy run on a fake target with experts (after a warm-up
    generation) and the drafting level's statistics; checks the output against plain decoding."""
    clock = FakeClock()
    target = FakeExpertModel(vocab_size=VOCAB, context_length=1000, seed=0, clock=clock, call_seconds=0.010,
                             token_seconds=0.0002, expert_seconds=0.003)
    draft = target.noisy(0.6, seed=4, call_seconds=0.001, token_seconds=0.0001)
    cascade = Cascade([draft, target], policy=policy, draft_max=draft_max, clock=clock)
    assert isinstance(cascade.target.round_timing, ExpertForwardTimeModel)
    generate(cascade, ByteTokenizer(VOCAB), PROMPT, 60).run()
    started = clock.seconds
    result = generate(cascade, ByteTokenizer(VOCAB), PROMPT, tokens).run()
    assert result.tokens == reference_greedy(target, PROMPT, tokens)
    return len(result.tokens) / (clock.seconds - started), result.timings["levels"][0]


def test_cost_policy_on_a_target_with_experts_is_as_fast_as_the_best_fixed_length():
    fixed = {K: expert_run("fixed", K)[0] for K in range(1, 9)}
    plain = 1.0 / (0.010 + 0.0002 + 2 * 4 * 0.003)  # one row: the dense part and 4 experts in each of 2 layers
    cost, drafting = expert_run("cost", 8)
    assert cost >= 0.95 * max(fixed.values())
    assert cost > 1.2 * plain
    assert drafting["draft_n"] > 0
    # The stopping rule ends drafts at several lengths; the rounds by length add up to what was drafted.
    assert len(drafting["proposed_lengths"]) > 1
    assert sum(length * rounds for length, rounds in drafting["proposed_lengths"].items()) == drafting["draft_n"]


def test_a_level_measures_the_experts_its_native_target_routes_to():
    model = moe_native_model("qwen3moe")
    level = ModelLevel(model)
    assert isinstance(level.round_timing, ExpertForwardTimeModel)
    assert level.experts.n_experts == 8 and level.experts.n_experts_used == 3
    assert 0.0 < level.experts.expert_share < 1.0
    prompt = gemma3_prompt()
    level.prefill(prompt[:-4])
    before = model.expert_rows()
    level._evaluate(prompt, rows=4)  # one forward of the last four tokens
    routed = model.expert_rows() - before
    assert routed.sum() == 4 * 3 * model.spec.n_layers
    assert level.experts.measured_sizes()[4] == pytest.approx(np.count_nonzero(routed, axis=1).mean())
    dense = ModelLevel(gemma3_native_model())
    assert dense.experts is None and type(dense.round_timing) is ForwardTimeModel
