"""Token sampling: the logits -> probability transform and a seeded sampler.

`token_distribution` is the ONE transform from logits to the distribution a token is drawn from. Plain
sampling and speculative verification both call it, on the target's logits (p) and on each draft's (q),
so rejection sampling compares like with like. Order, as documented for users: repetition penalty,
temperature, top-k, top-p, min-p. Temperature 0 means greedy: the argmax of the penalized logits, ties
going to the lowest token id.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlspecqd.validation import finite_number, whole_number


class SamplingParamsError(ValueError):
    """A sampling parameter outside its range; the message names the parameter."""


class NonFiniteLogitsError(ValueError):
    """A model gave NaN or infinite logits (finite weights can still overflow float32 in a forward):
    there is no distribution to choose a token from."""


def _check_finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise NonFiniteLogitsError(f"the model's logits are not finite ({what} is {value}): its weights overflow "
                                   "float32 on this input")


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. Defaults match llama.cpp's; `greedy()` gives temperature 0.

    top_k = 0, top_p = 1, min_p = 0, repeat_penalty = 1 and repeat_last_n = 0 each switch their step off.
    seed None draws fresh entropy; an int makes a run reproducible.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        finite_number("temperature", self.temperature, SamplingParamsError, low=0.0)
        whole_number("top_k", self.top_k, SamplingParamsError, low=0)
        finite_number("top_p", self.top_p, SamplingParamsError, low=0.0, high=1.0, low_open=True)
        finite_number("min_p", self.min_p, SamplingParamsError, low=0.0, high=1.0)
        finite_number("repeat_penalty", self.repeat_penalty, SamplingParamsError, low=0.0, low_open=True)
        whole_number("repeat_last_n", self.repeat_last_n, SamplingParamsError, low=0)
        if self.seed is not None:
            whole_number("seed", self.seed, SamplingParamsError, low=0)

    @classmethod
    def greedy(cls, repeat_penalty: float = 1.0, repeat_last_n: int = 64) -> SamplingParams:
        return cls(temperature=0.0, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **overrides: object) -> SamplingParams:
        """These parameters with the named ones replaced (and checked); an unknown name is an error."""
        unknown = sorted(set(overrides) - set(SAMPLING_PARAMETER_NAMES))
        if unknown:
            raise SamplingParamsError(f"unknown sampling parameter {unknown[0]!r}: the parameters are "
                                      f"{', '.join(SAMPLING_PARAMETER_NAMES)}")
        return dataclasses.replace(self, **overrides)


SAMPLING_PARAMETER_NAMES = tuple(parameter.name for parameter in dataclasses.fields(SamplingParams))


def penalized_logits(logits: np.ndarray, params: SamplingParams, recent_tokens: Sequence[int]) -> np.ndarray:
    """llama.cpp's repetition penalty over the distinct recent tokens: positive logits divided, negative
    multiplied. Returns `logits` itself when the penalty is off (no copy)."""
    if params.repeat_penalty == 1.0 or params.repeat_last_n == 0 or len(recent_tokens) == 0:
        return logits
    ids = np.unique(np.asarray(recent_tokens[-params.repeat_last_n :], dtype=np.int64))
    out = np.array(logits, dtype=np.float32, copy=True)
    values = out[ids]
    out[ids] = np.where(values > 0, values / params.repeat_penalty, values * params.repeat_penalty)
    return out


def greedy_token(logits: np.ndarray, params: SamplingParams, recent_tokens: Sequence[int]) -> int:
    """Argmax of the penalized logits; np.argmax returns the first maximum, so ties go to the lowest id
    (and a NaN, should there be one, which the check then refuses)."""
    scores = penalized_logits(logits, params, recent_tokens)
    best = int(np.argmax(scores))
    _check_finite(float(scores[best]), "the largest")
    return best


class TokenDistribution:
    """Next-token probabilities, summing to 1: nonzero only on `ids` (increasing), or dense over the
    whole vocabulary when `ids` is None. Top-k / top-p leave a few dozen candidates out of 150k, and
    keeping only those makes sampling and looking up p(x) cheap."""

    __slots__ = ("ids", "probabilities", "vocab_size")

    def __init__(self, ids: np.ndarray | None, probabilities: np.ndarray, vocab_size: int) -> None:
        self.ids = ids
        self.probabilities = probabilities
        self.vocab_size = vocab_size

    @classmethod
    def over(cls, ids: np.ndarray, weights: np.ndarray, vocab_size: int) -> TokenDistribution:
        """Normalized `weights` on `ids` (any order)."""
        order = np.argsort(ids)
        return cls(ids[order], weights[order] / weights.sum(), vocab_size)

    def probability(self, token: int) -> float:
        if self.ids is None:
            return float(self.probabilities[token])
        index = int(np.searchsorted(self.ids, token))
        return float(self.probabilities[index]) if index < self.ids.size and self.ids[index] == token else 0.0

    def top_probability(self) -> float:
        return float(self.probabilities.max())

    def dense(self) -> np.ndarray:
        if self.ids is None:
            return self.probabilities
        out = np.zeros(self.vocab_size, dtype=np.float64)
        out[self.ids] = self.probabilities
        return out


def token_distribution(logits: np.ndarray, params: SamplingParams, recent_tokens: Sequence[int]) -> TokenDistribution:
    """The distribution of the next token after penalty, temperature, top-k, top-p, min-p.

    `recent_tokens` are the tokens before this position (only the last repeat_last_n are used).
    Steps after the first work on the candidates still in the running, so a top-k of 40 over 150k
    logits costs one partition, not a sort of the vocabulary.
    """
    scores = penalized_logits(logits, params, recent_tokens)
    vocab = scores.shape[0]
    if params.is_greedy:
        best = int(np.argmax(scores))
        _check_finite(float(scores[best]), "the largest")
        return TokenDistribution(np.array([best]), np.ones(1), vocab)
    _check_finite(float(scores.max()), "the largest")
    if 0 < params.top_k < vocab:
        candidates = _top_ids(scores, params.top_k)  # highest first
        weights = np.exp((scores[candidates].astype(np.float64) - float(scores[candidates[0]])) / params.temperature)
        weights /= weights.sum()
        if params.top_p < 1.0:
            kept = int(np.searchsorted(np.cumsum(weights), params.top_p)) + 1
            candidates, weights = candidates[:kept], weights[:kept]
    else:
        weights = np.exp((scores.astype(np.float64) - float(scores.max())) / params.temperature)
        weights /= weights.sum()
        if params.top_p == 1.0 and params.min_p == 0.0:
            return TokenDistribution(None, weights, vocab)
        candidates = _head_reaching(scores, weights, params.top_p) if params.top_p < 1.0 else np.arange(vocab)
        weights = weights[candidates]
    if params.min_p > 0.0:
        keep = weights >= params.min_p * weights.max()
        candidates, weights = candidates[keep], weights[keep]
    return TokenDistribution.over(candidates, weights, vocab)


def _descending_order(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """`candidates` (increasing ids) sorted by value, highest first, ties by lowest id (stable sort)."""
    return candidates[np.argsort(-values[candidates], kind="stable")]


def _top_ids_with_ties(values: np.ndarray, count: int) -> np.ndarray:
    """Every id valued at least the `count`-th highest value, highest first."""
    threshold = np.partition(values, values.shape[0] - count)[values.shape[0] - count]
    return _descending_order(values, np.flatnonzero(values >= threshold))


def _top_ids(values: np.ndarray, count: int) -> np.ndarray:
    """The `count` highest-valued ids, highest first; ties go to the lowest ids."""
    return _top_ids_with_ties(values, count)[:count]


def _head_reaching(scores: np.ndarray, probabilities: np.ndarray, top_p: float) -> np.ndarray:
    """The most probable ids, highest first, up to and including the one where their mass reaches top_p.

    Probabilities follow the scores' order, so growing top sets of the scores are tried until one holds
    top_p of the mass; a top set ("every score >= the m-th largest", ties included) is exactly the head
    of a full sort, so the cut is the same as sorting the whole vocabulary, which is slow for 150k.
    """
    vocab = scores.shape[0]
    size = 64
    while True:
        head = _descending_order(scores, np.arange(vocab)) if size >= vocab else _top_ids_with_ties(scores, size)
        reached = np.flatnonzero(np.cumsum(probabilities[head]) >= top_p)
        if reached.size:
            return head[: int(reached[0]) + 1]
        if size >= vocab:  # rounding kept the total just under top_p: everything stays
            return head
        size *= 8


class Sampler:
    """SamplingParams plus the one seeded generator every random draw of a generation comes from."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    @property
    def is_greedy(self) -> bool:
        return self.params.is_greedy

    def recent(self, tokens: Sequence[int], position: int) -> Sequence[int]:
        """The tokens the repetition penalty looks at for the token at `position`."""
        if self.params.repeat_penalty == 1.0 or self.params.repeat_last_n == 0:
            return ()
        return tokens[max(0, position - self.params.repeat_last_n) : position]

    def distribution(self, logits: np.ndarray, recent_tokens: Sequence[int]) -> TokenDistribution:
        return token_distribution(logits, self.params, recent_tokens)

    def greedy_token(self, logits: np.ndarray, recent_tokens: Sequence[int]) -> int:
        return greedy_token(logits, self.params, recent_tokens)

    def sample(self, distribution: TokenDistribution) -> int:
        if distribution.ids is None:
            return self.sample_weights(distribution.probabilities)
        return self._draw(distribution.ids, distribution.probabilities)

    def sample_weights(self, weights: np.ndarray) -> int:
        """One draw from dense nonnegative `weights` over the vocabulary (need not be normalized)."""
        support = np.flatnonzero(weights)
        return self._draw(support, weights[support])

    def _draw(self, ids: np.ndarray, weights: np.ndarray) -> int:
        """Invert the cumulative sum over tokens with mass, so a zero-probability token is never drawn
        whatever the rounding."""
        cumulative = np.cumsum(weights)
        index = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return int(ids[min(index, ids.size - 1)])

    def choose(self, logits: np.ndarray, recent_tokens: Sequence[int]) -> int:
        if self.is_greedy:
            return self.greedy_token(logits, recent_tokens)
        return self.sample(self.distribution(logits, recent_tokens))
