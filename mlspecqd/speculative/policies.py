"""Draft-length policies: how many tokens a level proposes to the level above in the next round.

Every policy answers `choose(...)` before a round, may give a `stopping_rule(...)` that ends the draft
early token by token, and learns from `record(proposed, accepted, confidences)` after it. The `cost`
policy (the default) models time and acceptance online and may choose 0: speculation then switches
itself off where it cannot pay, and probes again now and then. Within a round it stops as SpecDec++
does, once the chance that the draft so far is all accepted is too low, with the threshold set by the
measured costs instead of trained.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from mlspecqd.speculative.experts import ExpertActivity
from mlspecqd.validation import whole_number


class PolicyError(ValueError):
    """An unknown policy name or a policy argument outside its range."""


class TimeModel:
    """Seconds to process T tokens (a forward and its verification; or a drafter's proposal of T tokens),
    learned online from the recent calls.

    A size measured at least `measured_at_size` times among the recent calls is estimated by the median
    of its last measurements: a CPU forward's time is a step function of T (flat while reading the
    weights bounds it, rising once the dot products do), which a straight line misplaces. A size between
    two measured ones is interpolated between them. A size beyond the measured ones takes the nearest
    measured time scaled by the prior shape, in which each token beyond the first costs
    `extra_token_share` of the first. For a verifier that share is small on purpose: a size priced too
    low is tried and then measured, while one priced too high is never tried, so never corrected. For a
    drafter it is 1, since a model drafter's time grows with each token it proposes. Until some size is
    measured, the estimate is a line a + b*T fitted by least squares over the recent calls, or, while
    those span fewer than three sizes, the prior shape through their mean (a line fitted through calls
    nearly all of one size would extrapolate their noise).
    """

    def __init__(self, extra_token_share: float = 1 / 32, window: int = 48, measured_at_size: int = 2,
                 medians_of: int = 5) -> None:
        self.extra_token_share = extra_token_share
        self.measured_at_size = measured_at_size
        self.medians_of = medians_of
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self._fit: Callable[[float], float] | None = None  # seconds by size from all calls, refitted on demand
        self._medians: dict[int, float] | None = None  # by measured size, recomputed on demand

    @property
    def sample_count(self) -> int:
        return len(self._samples)

    def record(self, tokens: int, seconds: float) -> None:
        self._samples.append((tokens, seconds))
        self._fit = None
        self._medians = None

    def estimate(self, tokens: int) -> float:
        if self._medians is None:
            self._medians = self._measured_sizes()
        measured = self._medians
        if tokens in measured:
            return measured[tokens]
        below = [t for t in measured if t < tokens]
        above = [t for t in measured if t > tokens]
        if below and above:
            low, high = max(below), min(above)
            return measured[low] + (measured[high] - measured[low]) * (tokens - low) / (high - low)
        anchors = [t for t in measured if t >= 1]  # a proposal of 0 tokens has no shape to scale
        if anchors:
            nearest = min(anchors, key=lambda t: abs(t - tokens))
            return measured[nearest] * self._prior_shape(tokens) / self._prior_shape(nearest)
        if self._fit is None:
            self._fit = self._least_squares()
        return self._fit(tokens)

    def _measured_sizes(self) -> dict[int, float]:
        """Median of the last `medians_of` calls for each size called at least `measured_at_size` times."""
        by_size: dict[int, list[float]] = {}
        for t, s in self._samples:
            by_size.setdefault(t, []).append(s)
        return {t: float(np.median(seconds[-self.medians_of:]))
                for t, seconds in by_size.items() if len(seconds) >= self.measured_at_size}

    def _shape(self, tokens: np.ndarray | float, slope: np.ndarray | float) -> np.ndarray | float:
        """The time of `tokens` tokens over that of one, where each token beyond the first costs `slope`
        of the first (arrays broadcast: a fit tries many slopes on many sizes at once)."""
        return 1.0 + (np.asarray(tokens) - 1.0) * slope

    def _prior_shape(self, tokens: float) -> float:
        return float(self._shape(tokens, self.extra_token_share))

    def _least_squares(self) -> Callable[[float], float]:
        count = len(self._samples)
        mean_tokens = sum(t for t, _ in self._samples) / count
        mean_seconds = sum(s for _, s in self._samples) / count
        sizes = [t for t, _ in self._samples]
        if max(sizes) - min(sizes) >= 2:  # sizes one apart give a slope mostly made of noise
            spread = sum((t - mean_tokens) ** 2 for t in sizes)
            slope = max(sum((t - mean_tokens) * (s - mean_seconds) for t, s in self._samples) / spread, 0.0)
            intercept = max(mean_seconds - slope * mean_tokens, 0.0)
            return lambda tokens: intercept + slope * tokens
        first_token = mean_seconds / max(self._prior_shape(mean_tokens), 1e-9)
        return lambda tokens: first_token * self._prior_shape(tokens)


class ForwardTimeModel(TimeModel):
    """The time of one forward call of T tokens: the machine's speed at the moment times the shape
    1 + slope * (T - 1), the two estimated apart.

    The speed of a shared machine (its memory bandwidth above all) changes within seconds, so per-size
    medians would mix speeds: a size last called in a slow stretch would look dear next to one called in
    a fast stretch, and a size priced too dear once is never verified again, so never measured again.
    One slope learned from every call leaves no size behind, and over the sizes a verifier sees (up to
    draft_max + 1) a forward's shape is near a line. Unlike `TimeModel`'s line, this one is not fitted
    in seconds, so changes of speed do not bend it.

    The slope is learned from calls next to each other: two calls in a row ran at nearly the same
    speed, so the ratio of their times is the ratio of their shapes. It is the slope whose shapes fit
    the last `pairs_kept` ratios best in absolute log error (a change of speed between two calls
    spoils one ratio; the fit, a median in effect, does not follow it). The current speed is the
    median of the last `medians_of` calls over their shapes: it follows a change of speed within a
    few calls, and one disturbed call does not move it. Until `pairs_needed` ratios are in, the
    estimate is a `TimeModel`'s. A drafter's proposal is not one forward (a recursive drafter's time
    depends on its own rounds), so its time model stays a `TimeModel`.
    """

    def __init__(self, extra_token_share: float = 1 / 32, window: int = 48, measured_at_size: int = 2,
                 medians_of: int = 5, pairs_kept: int = 96, pairs_needed: int = 4) -> None:
        super().__init__(extra_token_share, window, measured_at_size, medians_of)
        self.pairs_needed = pairs_needed
        self._pairs: deque[tuple[int, int, float]] = deque(maxlen=pairs_kept)  # (T1, T2, log(time2 / time1))
        self._speed_and_slope_fit: tuple[float, float] | None = None  # refitted on demand

    def record(self, tokens: int, seconds: float) -> None:
        if self._samples and seconds > 0.0:
            previous, previous_seconds = self._samples[-1]
            if previous != tokens and previous_seconds > 0.0:
                self._pairs.append((previous, tokens, float(np.log(seconds / previous_seconds))))
        self._speed_and_slope_fit = None
        super().record(tokens, seconds)

    def estimate(self, tokens: int) -> float:
        if len(self._pairs) < self.pairs_needed:
            return super().estimate(tokens)
        if self._speed_and_slope_fit is None:
            self._speed_and_slope_fit = self._speed_and_slope()
        speed, slope = self._speed_and_slope_fit
        return speed * float(self._shape(tokens, slope))

    def _speed_and_slope(self) -> tuple[float, float]:
        first, second, log_ratio = np.array(self._pairs).T

        def best_of(slopes: np.ndarray) -> float:
            predicted = np.log(self._shape(second, slopes[:, None])) - np.log(self._shape(first, slopes[:, None]))
            return float(slopes[np.argmin(np.abs(predicted - log_ratio).sum(axis=1))])

        coarse = best_of(np.linspace(0.0, 1.0, 41))  # the extra token's share of the first: 0 to 1 ...
        slope = best_of(np.clip(coarse + np.linspace(-0.025, 0.025, 21), 0.0, 1.0))  # ... to within 1/400
        recent = [(t, s) for t, s in self._samples if s > 0.0][-self.medians_of:]
        return float(np.median([s / self._shape(t, slope) for t, s in recent])), slope


class ExpertForwardTimeModel(ForwardTimeModel):
    """A `ForwardTimeModel` for a model with experts: the shape of a T-row forward is the bytes it reads
    over one row's (ExpertActivity.read_ratio: the dense weights once, each distinct expert once, with
    distinct experts measured from the router online) plus `slope` of the first row for each row beyond
    it (the arithmetic, fitted from consecutive calls as for a dense model). Its prior for sizes not yet
    timed thus prices each row by the experts it is expected to add, where a dense verifier's prior
    takes an extra row as nearly free."""

    def __init__(self, experts: ExpertActivity, **time_model_arguments: float) -> None:
        super().__init__(**time_model_arguments)
        self.experts = experts
        self._fitted_to = experts.version  # the router statistics the fits were made with

    def _shape(self, tokens: np.ndarray | float, slope: np.ndarray | float) -> np.ndarray | float:
        sizes, where = np.unique(np.asarray(tokens), return_inverse=True)
        read = np.array([self.experts.read_ratio(int(size)) for size in sizes])[where].reshape(np.shape(tokens))
        return read + (np.asarray(tokens) - 1.0) * slope

    def estimate(self, tokens: int) -> float:
        if self._fitted_to != self.experts.version:  # the shape moved with the router's statistics: refit
            self._fit = self._medians = self._speed_and_slope_fit = None
            self._fitted_to = self.experts.version
        return super().estimate(tokens)


def check_draft_max(draft_max: object) -> int:
    return whole_number("draft_max", draft_max, PolicyError, low=1)


class StoppingRule(Protocol):
    """Ends one round's draft early. The drafter asks `draft_more()` before it spends time on more
    tokens, and `keep(confidence)` for each token it drafted: a token not kept ends the draft. A
    confidence is the top probability of the distribution the token was drawn from (the n-gram
    drafter's match-length estimate): it depends on the distribution alone, never on which token was
    drawn, so dropping a token by it leaves speculative sampling exact."""

    def draft_more(self) -> bool: ...

    def keep(self, confidence: float) -> bool: ...


class DraftLengthPolicy:
    """Base: a fixed number of tokens.

    `choose` gets the measured time models of the drafter's proposals and of the verifier's rounds;
    `stopping_rule` (None: draft all that was chosen) is asked for right after it, for the same round.
    A policy with `uses_confidence` is given the confidences of the proposed tokens in `record`.
    """

    uses_confidence = False

    def __init__(self, draft_max: int) -> None:
        self.draft_max = check_draft_max(draft_max)

    def choose(self, drafter: TimeModel, verifier: TimeModel) -> int:
        return self.draft_max

    def stopping_rule(self, drafter: TimeModel, verifier: TimeModel) -> StoppingRule | None:
        return None

    def record(self, proposed: int, accepted: int, confidences: Sequence[float] = ()) -> None:
        """Learn from a round in which `accepted` of `proposed` drafted tokens were accepted."""


class FixedDraftLength(DraftLengthPolicy):
    """Always propose draft_max tokens."""


class HeuristicDraftLength(DraftLengthPolicy):
    """+2 after a round where every draft was accepted, -1 otherwise, within 1..draft_max."""

    def __init__(self, draft_max: int, initial: int = 4) -> None:
        super().__init__(draft_max)
        self.current = min(max(initial, 1), draft_max)

    def choose(self, drafter: TimeModel, verifier: TimeModel) -> int:
        return self.current

    def record(self, proposed: int, accepted: int, confidences: Sequence[float] = ()) -> None:
        if proposed == 0:
            return
        step = 2 if accepted == proposed else -1
        self.current = min(max(self.current + step, 1), self.draft_max)


class ConfidenceDraftLength(DraftLengthPolicy):
    """Draft up to draft_max, stopping at the first token whose draft confidence (top probability, or
    the n-gram drafter's match-length estimate) falls below a fixed threshold."""

    def __init__(self, draft_max: int, threshold: float = 0.5) -> None:
        super().__init__(draft_max)
        if not 0.0 <= threshold <= 1.0:
            raise PolicyError(f"confidence threshold must be in [0, 1] (got {threshold!r})")
        self.threshold = threshold

    def stopping_rule(self, drafter: TimeModel, verifier: TimeModel) -> StoppingRule:
        return ConfidenceThreshold(self.threshold)


class ConfidenceThreshold:
    """Keeps tokens while their confidence is at least the threshold."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def draft_more(self) -> bool:
        return True

    def keep(self, confidence: float) -> bool:
        return confidence >= self.threshold


class AcceptanceByPosition:
    """Online acceptance rate of the j-th drafted token given the ones before it were accepted.

    Starts as a running mean in which the prior counts as `prior_weight` observations (one unlucky
    first round must not switch a draft off), and becomes an exponential moving average once the
    observations outweigh 1/smoothing, so the estimate follows the text. The prior of the first
    position is `prior`; that of a later one is the rate of the position before it when it is first
    observed, since a draft accepted nearly always at five tokens is no worse at the sixth (a fixed prior
    there would make each new position look too risky to try).
    """

    def __init__(self, draft_max: int, smoothing: float = 0.1, prior: float = 0.6, prior_weight: float = 2.0) -> None:
        self.smoothing = smoothing
        self.prior_weight = prior_weight
        self.rates = np.full(draft_max, prior, dtype=np.float64)
        self.observations = np.zeros(draft_max, dtype=np.int64)

    def record(self, proposed: int, accepted: int) -> None:
        for position in range(min(accepted + 1, proposed)):
            if position and not self.observations[position]:
                self.rates[position] = self.rates[position - 1]
            self.observations[position] += 1
            weight = max(self.smoothing, 1.0 / (self.observations[position] + self.prior_weight))
            outcome = 1.0 if position < accepted else 0.0
            self.rates[position] += weight * (outcome - self.rates[position])

    def expected_tokens(self) -> np.ndarray:
        """Expected tokens a round yields for K = 0..draft_max: the verifier's own token plus the
        expected accepted prefix, sum over j <= K of the product of rates up to j. A position never
        observed (drafts have not been that long yet) is taken to behave like the one before it."""
        rates = self.rates.copy()
        for position in range(1, rates.size):
            if self.observations[position] == 0:
                rates[position] = rates[position - 1]
        return 1.0 + np.concatenate(([0.0], np.cumsum(np.cumprod(rates))))


class ConfidenceCalibration:
    """Online map from a drafted token's confidence to the chance that it is accepted, given that the
    drafts before it were. Confidences fall into bins, finer near 1 where most drafts sit; a bin starts
    at its midpoint (the chance a perfectly calibrated drafter would give) counted as `prior_weight`
    observations, and follows an exponential moving average once its observations outweigh 1/smoothing.
    """

    EDGES = np.array([0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])  # bin i: [EDGES[i-1], EDGES[i])

    def __init__(self, smoothing: float = 0.02, prior_weight: float = 2.0) -> None:
        self.smoothing = smoothing
        self.prior_weight = prior_weight
        bounds = np.concatenate(([0.0], self.EDGES, [1.0]))
        self.rates = (bounds[:-1] + bounds[1:]) / 2
        self.observations = np.zeros(self.rates.size, dtype=np.int64)

    def _bin(self, confidence: float) -> int:
        return int(np.searchsorted(self.EDGES, confidence, side="right"))

    def acceptance(self, confidence: float) -> float:
        return float(self.rates[self._bin(confidence)])

    def record(self, confidence: float, accepted: bool) -> None:
        index = self._bin(confidence)
        self.observations[index] += 1
        weight = max(self.smoothing, 1.0 / (self.observations[index] + self.prior_weight))
        self.rates[index] += weight * (float(accepted) - self.rates[index])


class CostDraftLength(DraftLengthPolicy):
    """Pick K in 0..draft_max maximizing expected tokens per second of the verifying level:

        rate(K) = expected_tokens(K) / (verify_seconds(K + 1) + draft_seconds(K)),   draft_seconds(0) = 0

    Both times are measured online (TimeModel): for a recursive drafter draft_seconds is its whole
    effective time, levels below included. Until both have `warm_up` measurements it drafts `initial`
    tokens (one slow call, on a busy machine, must not decide). After `reprobe_after` rounds at K = 0 it
    drafts one token, so a draft that became useful is noticed.

    Where drafting pays (K > 0) and `stop_early` is on, the round may draft up to draft_max and the
    `stopping_rule` ends it token by token (CostStoppingRule): a confident draft runs long, an unsure one
    stops at its first doubtful token. With `stop_early` off every round drafts the planned K.
    """

    uses_confidence = True

    def __init__(self, draft_max: int, initial: int = 4, warm_up: int = 3, reprobe_after: int = 16,
                 smoothing: float = 0.1, stop_early: bool = True) -> None:
        super().__init__(draft_max)
        self.stop_early = stop_early
        self.initial = min(max(initial, 1), draft_max)
        self.warm_up = warm_up
        self.reprobe_after = reprobe_after
        self.acceptance = AcceptanceByPosition(draft_max, smoothing)
        self.calibration = ConfidenceCalibration()
        self.rounds_at_zero = 0
        self.expected_rate: float | None = None  # tokens per second the last choice expects; None: not planned

    def choose(self, drafter: TimeModel, verifier: TimeModel) -> int:
        planned = self.plan(drafter, verifier)
        self.expected_rate = None
        if planned is None:
            return self.initial
        if self.rounds_at_zero >= self.reprobe_after:
            self.rounds_at_zero = 0
            return 1
        best, rate = planned
        self.rounds_at_zero = self.rounds_at_zero + 1 if best == 0 else 0
        if best == 0 or not self.stop_early:
            return best
        self.expected_rate = rate
        return self.draft_max

    def stopping_rule(self, drafter: TimeModel, verifier: TimeModel) -> StoppingRule | None:
        """The rule for the round just chosen; None for warm-up and probe rounds, which draft as chosen."""
        if self.expected_rate is None:
            return None
        return CostStoppingRule(self, drafter, verifier, self.expected_rate)

    def plan(self, drafter: TimeModel, verifier: TimeModel, extra_seconds: float = 0.0,
             prior: CostDraftLength | None = None) -> tuple[int, float] | None:
        """The best K and its expected tokens per second; None while warming up. `extra_seconds` is
        added to every round that drafts (a drafter's catch-up); `prior` lends its acceptance while this
        policy has observed nothing (a drafter's record with another verifier)."""
        if min(drafter.sample_count, verifier.sample_count) < self.warm_up:
            return None
        seconds = np.array([verifier.estimate(k + 1) + (drafter.estimate(k) + extra_seconds if k else 0.0)
                            for k in range(self.draft_max + 1)])
        acceptance = self.acceptance
        if prior is not None and prior.draft_max == self.draft_max and not acceptance.observations.any():
            acceptance = prior.acceptance
        rates = acceptance.expected_tokens() / np.maximum(seconds, 1e-12)
        best = int(np.argmax(rates))  # first maximum: ties go to the shorter draft
        return best, float(rates[best])

    def record(self, proposed: int, accepted: int, confidences: Sequence[float] = ()) -> None:
        self.acceptance.record(proposed, accepted)
        for position, confidence in enumerate(confidences[: min(accepted + 1, proposed)]):
            self.calibration.record(confidence, position < accepted)


class CostStoppingRule:
    """Drafts while more tokens are worth their time at the rate the round expects (`expected_rate`,
    tokens per second, the plan's best). With P the chance that every token kept so far is accepted:

    - another token is drafted if, for some j >= 1, the next j tokens are: the chances that each of
      them is accepted (P times the acceptance rates of their positions, tokens yet unseen) add up to
      at least expected_rate times their cost, j more drafted tokens and j more verified rows;
    - a drafted token is kept on the same test, its chance being P times the calibrated acceptance of
      its confidence and its own drafting paid for already.

    This is the usual rule for maximizing a rate: go on while what comes next yields more per second
    than the whole does. Where each verified row costs at least as much as the one before (a dense
    target) the chances fall and the costs do not, so j = 1 decides; on a target with experts the
    first extra row reads a new set of experts and later ones mostly share them, so a draft may be
    worth going on with although its next token alone is not. The rate of the plan is that of a fixed
    length, a floor of what stopping early achieves, so the rule errs toward drafting on.
    """

    def __init__(self, policy: CostDraftLength, drafter: TimeModel, verifier: TimeModel, expected_rate: float) -> None:
        self.policy = policy
        self.expected_rate = expected_rate
        self.kept = 0
        self.all_accepted = 1.0  # the chance that every kept token is accepted
        # The time models do not change within a round: their estimates, by drafted tokens.
        self._verify_seconds = [verifier.estimate(tokens + 1) for tokens in range(policy.draft_max + 1)]
        self._draft_seconds = [drafter.estimate(tokens) for tokens in range(policy.draft_max + 1)]

    def _worth_going_on(self, chance: float, drafted: bool) -> bool:
        """Whether the tokens from position `kept` on, the first accepted with `chance` (and `drafted`
        already), are worth their time for some number of them."""
        rates = self.policy.acceptance.rates
        gain = cost = 0.0
        for position in range(self.kept, self.policy.draft_max):
            if position > self.kept:
                chance *= rates[min(position, rates.size - 1)]
            if position > self.kept or not drafted:
                cost += max(self._draft_seconds[position + 1] - self._draft_seconds[position], 0.0)
            cost += max(self._verify_seconds[position + 1] - self._verify_seconds[position], 0.0)
            gain += chance
            if gain >= self.expected_rate * cost:
                return True
        return False

    def draft_more(self) -> bool:
        rates = self.policy.acceptance.rates
        return self._worth_going_on(self.all_accepted * rates[min(self.kept, rates.size - 1)], drafted=False)

    def keep(self, confidence: float) -> bool:
        chance = self.all_accepted * self.policy.calibration.acceptance(confidence)
        if not self._worth_going_on(chance, drafted=True):
            return False
        self.all_accepted = chance
        self.kept += 1
        return True


POLICIES: dict[str, type[DraftLengthPolicy]] = {
    "cost": CostDraftLength,
    "fixed": FixedDraftLength,
    "heuristic": HeuristicDraftLength,
    "confidence": ConfidenceDraftLength,
}
POLICY_NAMES = tuple(POLICIES)


def policy_class(name: str) -> type[DraftLengthPolicy]:
    """The policy registered as `name` in POLICIES; PolicyError naming the choices otherwise."""
    if name not in POLICIES:
        raise PolicyError(f"unknown draft-length policy {name!r}: choose one of {', '.join(POLICY_NAMES)}")
    return POLICIES[name]


def make_policy(name: str, draft_max: int) -> DraftLengthPolicy:
    """A fresh policy by name: one of POLICY_NAMES."""
    return policy_class(name)(draft_max)
