import numpy as np
import pytest

from mlspecqd.engine.sampling import (
    Sampler,
    SamplingParams,
    SamplingParamsError,
    TokenDistribution,
    greedy_token,
    penalized_logits,
    token_distribution,
)

PLAIN = dict(top_k=0, top_p=1.0, min_p=0.0)


@pytest.mark.parametrize("argument, value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", "1"),
    ("top_k", -1), ("top_k", 2.5), ("top_k", True),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", -0.2),
    ("min_p", -0.1), ("min_p", 1.01),
    ("repeat_penalty", 0.0), ("repeat_penalty", -1.0),
    ("repeat_last_n", -1),
    ("seed", -5), ("seed", 1.5),
])
def test_bad_parameter_is_refused_by_name(argument, value):
    with pytest.raises(SamplingParamsError, match=argument):
        SamplingParams(**{argument: value})
    assert issubclass(SamplingParamsError, ValueError)


def test_greedy_is_argmax_with_ties_to_lowest_id():
    logits = np.array([0.5, 2.0, -1.0, 2.0], dtype=np.float32)
    params = SamplingParams.greedy()
    assert greedy_token(logits, params, []) == 1
    assert Sampler(params).choose(logits, []) == 1
    np.testing.assert_array_equal(token_distribution(logits, params, []).dense(), [0, 1, 0, 0])


def test_temperature_scales_softmax():
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    got = token_distribution(logits, SamplingParams(temperature=0.5, **PLAIN), []).dense()
    scaled = logits.astype(np.float64) / 0.5
    expected = np.exp(scaled) / np.exp(scaled).sum()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_top_k_keeps_k_best_and_breaks_ties_to_lowest_ids():
    logits = np.array([3.0, 1.0, 3.0, 3.0, 0.0], dtype=np.float32)
    got = token_distribution(logits, SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0), []).dense()
    np.testing.assert_allclose(got, [0.5, 0, 0.5, 0, 0])


def test_top_p_keeps_smallest_head_reaching_the_mass():
    probabilities = np.array([0.1, 0.4, 0.3, 0.2])
    logits = np.log(probabilities).astype(np.float32)
    got = token_distribution(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.7, min_p=0.0), []).dense()
    np.testing.assert_allclose(got, [0, 0.4 / 0.7, 0.3 / 0.7, 0], rtol=1e-6)
    got = token_distribution(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.71, min_p=0.0), []).dense()
    np.testing.assert_allclose(got, [0, 0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9], rtol=1e-6)


def _reference_top_p(probabilities, top_p):
    order = sorted(range(len(probabilities)), key=lambda i: (-probabilities[i], i))
    kept, total = [], 0.0
    for index in order:
        kept.append(index)
        total += probabilities[index]
        if total >= top_p:
            break
    out = np.zeros_like(probabilities)
    out[kept] = probabilities[kept]
    return out / out.sum()


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_on_a_large_flat_vocabulary_matches_a_full_sort(top_p):
    # Flat logits with many exact ties force the growing top sets past their first sizes.
    logits = np.round(np.random.default_rng(3).standard_normal(20000) * 0.3, 1).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0)
    plain = token_distribution(logits, SamplingParams(temperature=1.0, **PLAIN), []).dense()
    got, expected = token_distribution(logits, params, []).dense(), _reference_top_p(plain, top_p)
    np.testing.assert_array_equal(got > 0, expected > 0)  # the same tokens kept, exactly
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_min_p_drops_tokens_below_a_share_of_the_best():
    probabilities = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probabilities).astype(np.float32)
    got = token_distribution(logits, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.29), []).dense()
    np.testing.assert_allclose(got, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], rtol=1e-6)


def test_repeat_penalty_divides_positive_multiplies_negative_within_window():
    logits = np.array([2.0, -1.0, 4.0, 1.0], dtype=np.float32)
    params = SamplingParams(repeat_penalty=2.0, repeat_last_n=3)
    # Token 2 is outside the window of the last 3 tokens; repeated ids count once.
    got = penalized_logits(logits, params, [2, 0, 1, 1])
    np.testing.assert_array_equal(got, [1.0, -2.0, 4.0, 1.0])
    assert penalized_logits(logits, SamplingParams(repeat_penalty=1.0), [0, 1]) is logits
    assert greedy_token(np.array([3.0, 2.0], dtype=np.float32), SamplingParams.greedy(repeat_penalty=2.0), [0]) == 1


def test_seed_reproduces_draws_and_zero_mass_is_never_drawn():
    weights = np.array([0.0, 0.25, 0.0, 0.75, 0.0])
    sparse = TokenDistribution.over(np.array([3, 1]), np.array([3.0, 1.0]), 5)
    np.testing.assert_array_equal(sparse.dense(), weights)
    assert sparse.probability(3) == 0.75 and sparse.probability(2) == 0.0 and sparse.top_probability() == 0.75
    sampler_a, sampler_b = Sampler(SamplingParams(seed=7)), Sampler(SamplingParams(seed=7))
    draws_a = [sampler_a.sample_weights(weights) for _ in range(4000)]
    draws_b = [sampler_b.sample(sparse) for _ in range(4000)]
    assert draws_a == draws_b  # the same seed, the same draws, whether the distribution is dense or sparse
    counts = np.bincount(draws_a, minlength=5)
    assert counts[0] == counts[2] == counts[4] == 0
    assert abs(counts[3] / 4000 - 0.75) < 0.03
