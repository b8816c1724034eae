"""A cascade of levels, smallest first, the target last: the whole speculative decoder.

Level i proposes tokens to level i+1 by running speculative decoding itself with level i-1 as its
draft; the bottom level decodes plainly (or, model-free, looks its proposal up in the sequence). Every
level checks that it shares the target's vocabulary when it is built.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from mlspecqd.speculative.levels import Decoding, LanguageModel, Level, Membership, ModelLevel, Proposal, Route
from mlspecqd.speculative.policies import CostDraftLength, check_draft_max, make_policy, policy_class
from mlspecqd.validation import whole_number


class CascadeError(ValueError):
    """A cascade that cannot work as configured (order of levels, sizes, a level reused)."""


class VocabularyMismatchError(CascadeError):
    """A level whose vocabulary differs from the target's: its token ids would mean other text."""


_MODEL_ATTRIBUTES = ("forward", "truncate", "vocab_size", "context_length", "n_past")


def _as_level(item: Level | LanguageModel, index: int) -> Level:
    if isinstance(item, Level):
        return item
    missing = [name for name in _MODEL_ATTRIBUTES if not hasattr(item, name)]
    if missing:
        raise CascadeError(f"level {index}: {type(item).__name__} is neither a Level nor a language model "
                           f"(missing {', '.join(missing)})")
    return ModelLevel(item)


class Cascade:
    """Levels smallest first, last = target. Raw models are wrapped in ModelLevel. Levels without a
    policy of their own get a fresh `policy` (a name in policies.POLICIES) with `draft_max`.

    `skip_levels`: under the cost policy a level may also take its drafts straight from a level further
    down, round by round, where that promises more tokens per second (ModelLevel._choose_route); False
    keeps the strict chain, each level drafting only for the next."""

    def __init__(self, levels: Sequence[Level | LanguageModel], *, policy: str = "cost", draft_max: int = 8,
                 prompt_chunk: int = 256, skip_levels: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if len(levels) == 0:
            raise CascadeError("a cascade needs at least one level (the target model)")
        policy_class(policy)
        check_draft_max(draft_max)
        whole_number("prompt_chunk", prompt_chunk, CascadeError, low=1)
        self.levels = [_as_level(item, index) for index, item in enumerate(levels)]
        target = self.levels[-1]
        if not isinstance(target, ModelLevel):
            raise CascadeError(f"the last level (the target) must be a model, "
                               f"not the {target.kind} level {target.name!r}")
        self.target: ModelLevel = target
        for index, level in enumerate(self.levels):
            if not isinstance(level, ModelLevel) and index != 0:
                raise CascadeError(f"level {index}: the {level.kind} level cannot verify, "
                                   "so it must be the bottom level")
            if level.cascade is not None:
                raise CascadeError(f"level {index} ({level.name!r}) already belongs to another cascade")
        models = [id(level.model) for level in self.levels if isinstance(level, ModelLevel)]
        if len(set(models)) != len(models):
            raise CascadeError("the same model object appears at two levels: its one KV cache cannot follow both")
        self.prompt_chunk = prompt_chunk
        self.clock = clock
        # A drafter that sat a whole generation out (the MXFP4 level the route choice steps around) is
        # not prefilled with the next prompt, except every this many prompts, so that it is measured again.
        self.prefill_all_every = 8
        self._prefills = 0
        names, model_drafters = [], 0
        for level in self.levels:
            model_drafters += isinstance(level, ModelLevel) and level is not target
            names.append(level.name or ("target" if level is target else f"draft{model_drafters}"))
        self._check_vocabularies(names)
        for index, level in enumerate(self.levels):
            needs_policy = level is not target and level.policy is None
            level.join(Membership(cascade=self, name=names[index], clock=clock,
                                  policy=make_policy(policy, draft_max) if needs_policy else None,
                                  prompt_chunk=prompt_chunk, in_step_lag=len(self.levels) - index))
        for index, level in enumerate(self.levels):
            if isinstance(level, ModelLevel) and index > 0:
                nearest = self.levels[index - 1]
                may_skip = skip_levels and index >= 2 and isinstance(nearest.policy, CostDraftLength)
                further = self.levels[index - 2 :: -1] if may_skip else []
                level.accept_drafts_from([Route(nearest, nearest.policy)]
                                         + [Route(below, CostDraftLength(draft_max)) for below in further])

    def _check_vocabularies(self, names: Sequence[str]) -> None:
        target = self.target
        for index, level in enumerate(self.levels[:-1]):
            if isinstance(level, ModelLevel) and level.vocab_size != target.vocab_size:
                raise VocabularyMismatchError(f"level {index} ({names[index]!r}): {level.vocab_size} logits per token, "
                                              f"the target has {target.vocab_size}")
            if level.tokenizer is not None and target.tokenizer is not None:
                difference = level.tokenizer.same_vocabulary(target.tokenizer)
                if difference is not None:
                    raise VocabularyMismatchError(f"level {index} ({names[index]!r}): vocabulary differs from the "
                                                  f"target's: {difference}")

    @property
    def vocab_size(self) -> int:
        return self.target.vocab_size

    @property
    def context_length(self) -> int:
        return self.target.context_length

    @property
    def tokenizer(self) -> object | None:
        return self.target.tokenizer

    def prefill(self, prompt: Sequence[int], chunk: int | None = None) -> int:
        """Process the prompt, all but its last token (which the first round forwards), in the target and
        in every drafter that drafted since the last prompt; all of them every `prefill_all_every`
        prompts, so that a level the cost policy stepped around is measured again. A drafter left out
        catches up if a round calls on it (ModelLevel._choose_route prices that). Returns how many prompt
        tokens the target had cached already."""
        reused = 0
        prefill_all = self._prefills % self.prefill_all_every == 0
        self._prefills += 1
        for level in self.levels:
            if isinstance(level, ModelLevel):
                if not (level is self.target or level.drafted_since_prefill or prefill_all):
                    level.sync(prompt)  # keep no tokens that are not the new text's
                    continue
                level.drafted_since_prefill = False
                count = level.prefill(list(prompt[:-1]), chunk)
                if level is self.target:
                    reused = count
        return reused

    def step(self, sequence: list[int], budget: int, decoding: Decoding) -> Proposal:
        """One round of the target: 1..budget tokens continuing `sequence`. The caller keeps
        len(sequence) + budget <= context_length."""
        return self.target.step(sequence, budget, decoding)

    def sync(self, sequence: Sequence[int]) -> None:
        """Truncate every level's cache to its common prefix with `sequence` (the accepted text)."""
        for level in self.levels:
            level.sync(sequence)

    def reset_stats(self) -> None:
        for level in self.levels:
            level.stats = type(level.stats)()

    def stats(self, wall_seconds: float | None = None) -> list[dict]:
        """Per-level counters, smallest level first; shares of wall time when `wall_seconds` is given."""
        return [{"level": index, "name": level.name, "kind": level.kind, **level.stats.as_dict(wall_seconds)}
                for index, level in enumerate(self.levels)]
