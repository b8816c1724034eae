"""Lossless verification of one drafted token by sampling (greedy verification is a plain comparison).

A draft token x drawn from q is accepted with probability min(1, p(x) / q(x)); on rejection the verifier
draws from normalize(max(0, p - q)). The emitted token is then distributed exactly as p. A draft that
is a point mass on x (the n-gram drafter; `q is None`) is the special case q = one_hot(x).
"""

from __future__ import annotations

import numpy as np

from mlspecqd.engine.sampling import Sampler, TokenDistribution


def residual_distribution(p: TokenDistribution, q: TokenDistribution | None, token: int) -> np.ndarray:
    """max(0, p - q) over the vocabulary, unnormalized. Only needed after a rejection (at most once per
    round), whose probability is sum(max(0, p - q)), so the residual has mass up to rounding."""
    residual = p.dense().copy()
    if q is None:
        residual[token] = 0.0
        return residual
    if q.ids is None:
        return np.maximum(residual - q.probabilities, 0.0)
    residual[q.ids] = np.maximum(residual[q.ids] - q.probabilities, 0.0)
    return residual


def verify_sampled_token(p: TokenDistribution, q: TokenDistribution | None, token: int,
                         sampler: Sampler) -> tuple[bool, int]:
    """(accepted, emitted token). One uniform draw per verified token, one more on rejection."""
    draft_probability = 1.0 if q is None else q.probability(token)
    if sampler.rng.random() * draft_probability < p.probability(token):
        return True, token
    residual = residual_distribution(p, q, token)
    if residual.sum() <= 0.0:  # p == q up to rounding: any draw from p is the exact answer
        return False, sampler.sample(p)
    return False, sampler.sample_weights(residual)
