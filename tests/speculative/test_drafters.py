"""Drafting levels: a model level catching up after sitting rounds or prompts out and the price of its
proposals, and the n-gram drafter."""

import numpy as np
import pytest

from mlspecqd.apps.generation import generate
from mlspecqd.engine.sampling import Sampler, SamplingParams
from mlspecqd.speculative import Cascade, Decoding, ModelLevel, NgramDrafter
from support.fake_models import ByteTokenizer, FakeClock, reference_greedy
from support.speculative_fixtures import PROMPT, VOCAB, assert_caches_match_accepted_text, target_model


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
    # that would make every probe after a pause look too dear to resume drafting.
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
