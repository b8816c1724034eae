"""Levels of a speculative cascade: what a drafter offers the level above, and the model level.

A model level verifies the drafts of the level below (if any) with one forward pass and emits between
one and K+1 tokens per round: the accepted drafts, then its own token (the correction on a rejection,
the bonus when all were accepted). As a drafter for the level above it simply runs such rounds until it
has the requested number of tokens. The probabilities it computed while verifying are exactly those of
the tokens it emits, so they go up as the proposal distribution q: nothing is computed twice.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mlspecqd.engine.sampling import Sampler, TokenDistribution
from mlspecqd.speculative import verification
from mlspecqd.speculative.experts import ExpertActivity
from mlspecqd.speculative.policies import (
    CostDraftLength,
    DraftLengthPolicy,
    ExpertForwardTimeModel,
    ForwardTimeModel,
    StoppingRule,
    TimeModel,
)


class LanguageModel(Protocol):
    """What the cascade needs from a model (mlspecqd.engine.model.Model satisfies it)."""

    vocab_size: int
    n_past: int
    context_length: int

    def forward(self, tokens: Sequence[int], start: int, all_logits: bool) -> np.ndarray:
        """Truncate the KV cache to `start`, append `tokens`; logits (T or 1, vocab) float32."""

    def truncate(self, n: int) -> None: ...


@dataclass(frozen=True)
class Decoding:
    """Per-generation settings every level reads: the sampler (and its generator) and the ids that end it."""

    sampler: Sampler
    end_ids: frozenset[int]


@dataclass
class Proposal:
    """Tokens with, for each, the distribution it was drawn from (None: a point mass on the token, as
    under greedy decoding or from a model-free drafter), the logits row it came from (None: no model)
    and, in a draft whose policy learns from them, its confidence (policies.StoppingRule)."""

    tokens: list[int] = field(default_factory=list)
    distributions: list[TokenDistribution | None] = field(default_factory=list)
    logits: list[np.ndarray | None] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)

    def append(self, token: int, distribution: TokenDistribution | None, logits: np.ndarray | None,
               confidence: float | None = None) -> None:
        self.tokens.append(token)
        self.distributions.append(distribution)
        self.logits.append(logits)
        if confidence is not None:
            self.confidences.append(confidence)

    def __len__(self) -> int:
        return len(self.tokens)


def model_confidence(distribution: TokenDistribution | None, logits: np.ndarray) -> float:
    """Top probability of the distribution a token was drawn from (of softmax(logits) under greedy).
    In float32: this runs once per drafted token over the whole vocabulary, where float64 would cost a
    noticeable share of a small draft model's token."""
    if distribution is not None:
        return distribution.top_probability()
    shifted = logits - logits.max()
    np.exp(shifted, out=shifted)
    return float(1.0 / shifted.sum(dtype=np.float64))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix. Slice comparisons run in C; bisect on the first mismatch."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    equal_up_to, differs_by = 0, n  # a[:equal_up_to] == b[:equal_up_to]; a[:differs_by] != b[:differs_by]
    while differs_by - equal_up_to > 1:
        middle = (equal_up_to + differs_by) // 2
        if a[equal_up_to:middle] == b[equal_up_to:middle]:
            equal_up_to = middle
        else:
            differs_by = middle
    return equal_up_to


@dataclass
class LevelStats:
    """Counters of one level for one generation (reset by Cascade.reset_stats)."""

    draft_n: int = 0
    draft_n_accepted: int = 0
    draft_rounds: int = 0
    proposed_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)
    draft_length_choices: Counter = field(default_factory=Counter)
    forward_calls: int = 0
    forward_tokens: int = 0
    forward_seconds: float = 0.0
    verify_rounds: int = 0
    emitted_tokens: int = 0
    rounds_by_verifier: Counter = field(default_factory=Counter)  # rounds that drafted, by level drafted for

    def record_round(self, proposed: int, accepted: int) -> None:
        if proposed == 0:
            return
        self.draft_rounds += 1
        self.draft_n += proposed
        self.draft_n_accepted += accepted
        while len(self.proposed_at) < proposed:
            self.proposed_at.append(0)
            self.accepted_at.append(0)
        for position in range(proposed):
            self.proposed_at[position] += 1
            self.accepted_at[position] += position < accepted

    def as_dict(self, wall_seconds: float | None) -> dict:
        return {
            "draft_n": self.draft_n,
            "draft_n_accepted": self.draft_n_accepted,
            "acceptance_rate": self.draft_n_accepted / self.draft_n if self.draft_n else None,
            # Share of the drafts proposed at position j that were accepted (so were all before them).
            "acceptance_by_position": [a / p for a, p in zip(self.accepted_at, self.proposed_at)],
            "mean_accepted_length": self.draft_n_accepted / self.draft_rounds if self.draft_rounds else None,
            "draft_rounds": self.draft_rounds,
            "draft_length_choices": dict(sorted(self.draft_length_choices.items())),
            # Rounds by the tokens actually drafted (a stopping rule may end a draft before its choice).
            "proposed_lengths": {length: int(count) for length, count in enumerate(
                -np.diff([*self.proposed_at, 0]), start=1) if count},
            "rounds_by_verifier": dict(self.rounds_by_verifier),
            "verify_rounds": self.verify_rounds,
            "tokens_per_verify_round": self.emitted_tokens / self.verify_rounds if self.verify_rounds else None,
            "forward_calls": self.forward_calls,
            "forward_tokens": self.forward_tokens,
            "forward_ms": self.forward_seconds * 1e3,
            "share_of_wall_time": self.forward_seconds / wall_seconds if wall_seconds else None,
        }


@dataclass(frozen=True)
class Membership:
    """What a cascade gives a level it takes in."""

    cascade: object
    name: str                                # the level's name unless it has one of its own
    clock: Callable[[], float]
    policy: DraftLengthPolicy | None         # the level's policy unless it has one (None: the target)
    prompt_chunk: int                        # most tokens per forward while prefilling
    in_step_lag: int                         # model levels above this one, plus one (see ModelLevel)


class Level:
    """A member of a cascade. As a drafter it proposes tokens continuing a sequence; the cascade that
    takes it in (`join`) gives it its clock and, where it has none of its own, a draft-length policy."""

    kind = "level"

    def __init__(self, name: str | None, tokenizer: object | None = None,
                 policy: DraftLengthPolicy | None = None) -> None:
        self.name = name  # None: the cascade names it by its place ("target", "draft1", ...)
        self.tokenizer = tokenizer
        self.policy = policy
        self.clock: Callable[[], float] = time.perf_counter
        self.stats = LevelStats()
        self.proposal_timing = TimeModel(extra_token_share=1.0)
        self.drafted_since_prefill = True  # the Cascade prefills a drafter that sat a prompt out only now and then
        self.cascade: object | None = None  # the cascade that took this level in; a level serves one

    def join(self, membership: Membership) -> None:
        """Become a member of `membership.cascade`."""
        self.cascade = membership.cascade
        self.clock = membership.clock
        if self.name is None:
            self.name = membership.name
        if self.policy is None:
            self.policy = membership.policy

    def propose(self, sequence: list[int], count: int, decoding: Decoding, stopping: StoppingRule | None = None,
                confidences: bool = False) -> Proposal:
        """Up to `count` tokens continuing `sequence`, ending early at an end-of-generation token or
        where `stopping` says; with their confidences where `stopping` is given or `confidences` asked."""
        raise NotImplementedError

    def sync(self, sequence: Sequence[int]) -> None:
        """Drop any cached state past the longest common prefix with `sequence` (model-free: nothing)."""

    def catch_up_seconds(self, sequence: Sequence[int]) -> float:
        """Time a proposal continuing `sequence` would first spend on tokens this level missed while it
        sat rounds out, beyond what an in-step drafter forwards (model-free: none)."""
        return 0.0

    def record_round(self, verifier: str | None, chosen: int, proposed: int, accepted: int) -> None:
        """The level `verifier` chose `chosen` tokens, got `proposed`, accepted `accepted` of them."""
        self.stats.draft_length_choices[chosen] += 1
        self.stats.record_round(proposed, accepted)
        if chosen > 0:
            self.stats.rounds_by_verifier[verifier] += 1
            self.drafted_since_prefill = True


@dataclass
class Route:
    """A level below a verifier that may draft for it, with the draft-length policy of that pairing.
    The nearest level below is the first route, with the drafter's own policy; under the cost policy the
    levels further down are routes too (the levels between them sit such rounds out)."""

    drafter: Level
    policy: DraftLengthPolicy
    rounds_unused: int = 0


# id(model) -> id(the ModelLevel that last used its cache). One model may serve several cascades in
# turn (a benchmark, a chat session that changes its drafts); the level that finds another level's
# mark starts from an empty cache instead of trusting tokens it did not put there.
_cache_owner: dict[int, int] = {}


class ModelLevel(Level):
    """A model in the cascade, keeping its KV cache in step with the tokens it is asked about."""

    kind = "model"

    def __init__(self, model: LanguageModel, name: str | None = None, tokenizer: object | None = None,
                 policy: DraftLengthPolicy | None = None) -> None:
        super().__init__(name, tokenizer, policy)
        self.model = model
        self.routes: list[Route] = []  # who may draft for this level (accept_drafts_from)
        self.route_reprobe_after = 32  # rounds after which a route not taken is tried once, where it is in step
        self.chunk = 256
        # Distinct experts per forward size, from the model's router (None: a dense model).
        self.experts = ExpertActivity.of(model)
        # A forward of T tokens and the verification of its rows.
        self.round_timing = ForwardTimeModel() if self.experts is None else ExpertForwardTimeModel(self.experts)
        # Tokens a drafter's cache may lack when it drafted in every round so far: one from each model
        # level above it, and one more where a round of the level above had no room to ask it.
        self.in_step_lag = 2
        self._cached: list[int] = []  # the tokens whose keys/values the model holds, in order

    def join(self, membership: Membership) -> None:
        super().join(membership)
        self.chunk = membership.prompt_chunk
        self.in_step_lag = membership.in_step_lag

    def accept_drafts_from(self, routes: Sequence[Route]) -> None:
        """The levels below that may draft for this one, the nearest first."""
        self.routes = list(routes)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def context_length(self) -> int:
        return self.model.context_length

    def sync(self, sequence: Sequence[int]) -> None:
        self._check_cache()
        keep = common_prefix_length(self._cached, sequence)
        if keep < len(self._cached):
            self.model.truncate(keep)
            del self._cached[keep:]

    def prefill(self, tokens: Sequence[int], chunk: int | None = None) -> int:
        """Bring the cache to exactly `tokens`, in forwards of `chunk` tokens (default: the cascade's
        prompt chunk); returns how many were already cached. A level whose context cannot hold them is
        left alone: it will not draft this time."""
        if len(tokens) > self.context_length:
            return 0
        self.sync(tokens)
        reused = len(self._cached)
        chunk = chunk or self.chunk
        for start in range(reused, len(tokens), chunk):
            self._forward(tokens[start : start + chunk], start, all_logits=False)
        return reused

    def step(self, sequence: list[int], budget: int, decoding: Decoding) -> Proposal:
        """One round: draft with the level below, verify with one forward, emit 1..budget tokens.

        The caller guarantees len(sequence) - 1 + (budget - 1) < context_length.
        """
        chosen = 0
        draft = Proposal()
        route = self._choose_route(sequence) if self.routes and budget > 1 else None
        if route is not None:
            policy, drafter_timing = route.policy, route.drafter.proposal_timing
            chosen = min(policy.choose(drafter_timing, self.round_timing), budget - 1)
            if chosen > 0:
                stopping = policy.stopping_rule(drafter_timing, self.round_timing)
                draft = route.drafter.propose(sequence, chosen, decoding, stopping, confidences=policy.uses_confidence)
        started = self.clock()
        extended = sequence + draft.tokens
        rows, forwarded = self._evaluate(extended, len(draft) + 1)
        emitted, accepted = self._verify(sequence, extended, draft, rows, decoding)
        self.round_timing.record(forwarded, self.clock() - started)
        if route is not None:
            route.drafter.record_round(self.name, chosen, len(draft), accepted)
            route.policy.record(len(draft), accepted, draft.confidences)
        self.stats.verify_rounds += 1
        self.stats.emitted_tokens += len(emitted)
        return emitted

    def _choose_route(self, sequence: list[int]) -> Route:
        """The route of the next round: the nearest level below, unless, under the cost policy, a level
        further down promises more tokens per second, its catch-up priced in. A middle level whose drafts
        cost more than their better acceptance saves is thus stepped around. A route not taken for `route_reprobe_after`
        rounds is tried once when its drafter is in step, so that what it would give is measured."""
        nearest = self.routes[0]
        if len(self.routes) == 1 or not isinstance(nearest.policy, CostDraftLength):
            return nearest
        chosen, best_rate = nearest, None
        for route in self.routes:
            catch_up = route.drafter.catch_up_seconds(sequence)
            if route.rounds_unused >= self.route_reprobe_after and catch_up == 0.0:
                chosen = route
                break
            own = route.drafter.policy  # the drafter's record with the level it drafts for when in step
            plan = route.policy.plan(route.drafter.proposal_timing, self.round_timing, catch_up,
                                     prior=own if isinstance(own, CostDraftLength) else None)
            if plan is None:
                if route is nearest:
                    break  # still warming up: the nearest drafts
                continue
            if best_rate is None or plan[1] > best_rate:
                chosen, best_rate = route, plan[1]
        for route in self.routes:
            route.rounds_unused = 0 if route is chosen else route.rounds_unused + 1
        return chosen

    def _verify(self, sequence: list[int], extended: list[int], draft: Proposal, rows: np.ndarray,
                decoding: Decoding) -> tuple[Proposal, int]:
        """The emitted tokens and how many of them are accepted drafts."""
        sampler = decoding.sampler
        emitted = Proposal()
        accepted_drafts = 0
        for j, row in enumerate(rows):
            position = len(sequence) + j
            recent = sampler.recent(extended, position)
            if sampler.is_greedy:
                p = None
                mine = sampler.greedy_token(row, recent)
            else:
                p = sampler.distribution(row, recent)
            if j < len(draft):
                if sampler.is_greedy:
                    accepted, token = draft.tokens[j] == mine, mine
                else:
                    accepted, token = verification.verify_sampled_token(p, draft.distributions[j], draft.tokens[j],
                                                                        sampler)
            else:
                accepted, token = False, mine if sampler.is_greedy else sampler.sample(p)
            emitted.append(token, p, row)
            accepted_drafts += accepted
            if not accepted or token in decoding.end_ids:
                break
        return emitted, accepted_drafts

    def propose(self, sequence: list[int], count: int, decoding: Decoding, stopping: StoppingRule | None = None,
                confidences: bool = False) -> Proposal:
        started = self.clock()
        behind = self._tokens_behind(sequence)
        count = min(count, self.context_length - len(sequence))
        proposal = Proposal()
        finished = False
        drafted = 0  # the proposal's tokens and those the stopping rule dropped: all cost their time
        while len(proposal) < count and not finished and (stopping is None or stopping.draft_more()):
            emitted = self.step(sequence + proposal.tokens, count - len(proposal), decoding)
            drafted += len(emitted)
            for token, distribution, logits in zip(emitted.tokens, emitted.distributions, emitted.logits):
                confidence = model_confidence(distribution, logits) if stopping or confidences else None
                if stopping is not None and not stopping.keep(confidence):
                    finished = True
                    break
                proposal.append(token, distribution, logits, confidence)
                if token in decoding.end_ids:
                    finished = True
                    break
        # A drafter that sat out rounds first forwards the tokens it missed. That is the price of
        # having paused, not of drafting (catch_up_seconds prices it): recorded here, it would make every
        # probe after a pause look too dear to resume.
        if behind <= self.in_step_lag:
            self.proposal_timing.record(drafted, self.clock() - started)
        return proposal

    def catch_up_seconds(self, sequence: Sequence[int]) -> float:
        behind = self._tokens_behind(sequence)
        if behind <= self.in_step_lag or self.round_timing.sample_count == 0:  # nothing measured: no price yet
            return 0.0
        return max(self.round_timing.estimate(behind) - self.round_timing.estimate(self.in_step_lag), 0.0)

    def _tokens_behind(self, sequence: Sequence[int]) -> int:
        """Tokens of `sequence` past the longest prefix this level's cache holds."""
        self._check_cache()
        return len(sequence) - common_prefix_length(self._cached, sequence)

    def _check_cache(self) -> None:
        # Another level (of another cascade) used this model since: its cache holds unknown text.
        if _cache_owner.get(id(self.model)) != id(self) or self.model.n_past != len(self._cached):
            self._cached = []
        _cache_owner[id(self.model)] = id(self)

    def _evaluate(self, tokens: list[int], rows: int) -> tuple[np.ndarray, int]:
        """Logits for the last `rows` positions of `tokens`, forwarding only what the cache lacks (at least
        those rows); returns them and the number of tokens in the last forward call."""
        self._check_cache()
        start = min(common_prefix_length(self._cached, tokens), len(tokens) - rows)
        while len(tokens) - start > max(self.chunk, rows):
            self._forward(tokens[start : start + self.chunk], start, all_logits=False)
            start += self.chunk
        logits = self._forward(tokens[start:], start, all_logits=rows > 1)
        return logits[-rows:], len(tokens) - start

    def _forward(self, tokens: Sequence[int], start: int, all_logits: bool) -> np.ndarray:
        routed_before = self.model.expert_rows() if self.experts is not None else None
        started = self.clock()
        logits = self.model.forward(np.asarray(tokens, dtype=np.int32), start, all_logits)
        self.stats.forward_seconds += self.clock() - started
        if routed_before is not None:
            self.experts.record(len(tokens), self.model.expert_rows() - routed_before)
        self.stats.forward_calls += 1
        self.stats.forward_tokens += len(tokens)
        del self._cached[start:]
        self._cached.extend(int(t) for t in tokens)
        return np.asarray(logits)
