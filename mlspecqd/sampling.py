"""Token sampling: the logits -> probability transform and a seeded sampler.

`token_distribution` is the ONE transform from logits to the distribution a token is drawn from. Plain
sampling and speculative verification both call it, on the target's logits (p) and on each draft's (q),
so rejection sampling compares like with like. Order, as documented for users: repetition penalty,
temperature, top-k, top-p, min-p. Temperature 0 means greedy: the argmax of the penalized logits, ties
going to the lowest token id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


class SamplingParamsError(ValueError):
    """A sampling parameter outside its range; the message names the parameter."""


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
        _check_real("temperature", self.temperature, low=0.0)
        _check_int("top_k", self.top_k, low=0)
        _check_real("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        _check_real("min_p", self.min_p, low=0.0, high=1.0)
        _check_real("repeat_penalty", self.repeat_penalty, low=0.0, low_open=True)
        _check_int("repeat_last_n", self.repeat_last_n, low=0)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0)

    @classmethod
    def greedy(cls, repeat_penalty: float = 1.0, repeat_last_n: int = 64) -> "SamplingParams":
        return cls(temperature=0.0, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def _check_real(name: str, value: object, low: float, high: float = math.inf, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SamplingParamsError(f"{name} must be a finite number (got {value!r})")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        interval = ("(" if low_open else "[") + f"{low:g}, " + (f"{high:g}]" if math.isfinite(high) else "inf)")
        raise SamplingParamsError(f"{name} must be in {interval} (got {value!r})")


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SamplingParamsError(f"{name} must be an integer (got {value!r})")
    if value < low:
        raise SamplingParamsError(f"{name} must be >= {low} (got {value!r})")


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
    """Argmax of the penalized logits; np.argmax returns the first maximum, so ties go to the lowest id."""
    return int(np.argmax(penalized_logits(logits, params, recent_tokens)))


def token_distribution(logits: np.ndarray, params: SamplingParams, recent_tokens: Sequence[int]) -> np.ndarray:
    """Probabilities (float64, sums to 1) of the next token after penalty, temperature, top-k, top-p, min-p.

    `recent_tokens` are the tokens before this position (only the last repeat_last_n are used).
    """
    scores = penalized_logits(logits, params, recent_tokens).astype(np.float64)
    if params.is_greedy:
        one_hot = np.zeros(scores.shape[0], dtype=np.float64)
        one_hot[int(np.argmax(scores))] = 1.0
        return one_hot
    scores /= params.temperature
    if 0 < params.top_k < scores.shape[0]:
        keep = _top_ids(scores, params.top_k)
        masked = np.full_like(scores, -np.inf)
        masked[keep] = scores[keep]
        scores = masked
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    if params.top_p < 1.0:
        probabilities = _nucleus(probabilities, params.top_p)
    if params.min_p > 0.0:
        probabilities = np.where(probabilities >= params.min_p * probabilities.max(), probabilities, 0.0)
        probabilities /= probabilities.sum()
    return probabilities


def _descending_order(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """`candidates` (increasing ids) sorted by value, highest first, ties by lowest id (stable sort)."""
    return candidates[np.argsort(-values[candidates], kind="stable")]


def _top_ids(values: np.ndarray, count: int) -> np.ndarray:
    """The `count` highest-valued ids; at a tie on the boundary the lowest ids win."""
    threshold = np.partition(values, values.shape[0] - count)[values.shape[0] - count]
    return _descending_order(values, np.flatnonzero(values >= threshold))[:count]


def _nucleus(probabilities: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the most probable tokens up to and including the one where the cumulative mass reaches top_p.

    Sorting the whole vocabulary is slow for 150k tokens, so sort growing top sets until one holds
    top_p of the mass. A top set taken as "every value >= the m-th largest" is exactly the head of the
    full sort, ties included, so the cut is the same as with a full sort.
    """
    vocab = probabilities.shape[0]
    size = 64
    while True:
        if size >= vocab:
            ordered = _descending_order(probabilities, np.arange(vocab))
        else:
            threshold = np.partition(probabilities, vocab - size)[vocab - size]
            ordered = _descending_order(probabilities, np.flatnonzero(probabilities >= threshold))
        cumulative = np.cumsum(probabilities[ordered])
        reached = np.flatnonzero(cumulative >= top_p)
        if reached.size or size >= vocab:
            last = int(reached[0]) if reached.size else ordered.size - 1
            kept = np.zeros_like(probabilities)
            kept[ordered[: last + 1]] = probabilities[ordered[: last + 1]]
            return kept / kept.sum()
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

    def distribution(self, logits: np.ndarray, recent_tokens: Sequence[int]) -> np.ndarray:
        return token_distribution(logits, self.params, recent_tokens)

    def greedy_token(self, logits: np.ndarray, recent_tokens: Sequence[int]) -> int:
        return greedy_token(logits, self.params, recent_tokens)

    def sample(self, probabilities: np.ndarray) -> int:
        """One draw from `probabilities` (need not be normalized) by inverting the cumulative sum."""
        cumulative = np.cumsum(probabilities)
        index = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        # Rounding can put the draw at the very top; the last token with mass is then the right answer.
        return min(index, int(np.flatnonzero(probabilities)[-1]))

    def choose(self, logits: np.ndarray, recent_tokens: Sequence[int]) -> int:
        if self.is_greedy:
            return self.greedy_token(logits, recent_tokens)
        return self.sample(self.distribution(logits, recent_tokens))
