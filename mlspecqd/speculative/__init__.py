"""Multi-level speculative decoding: a cascade of drafters verified level by level up to the target.

    cascade = Cascade([NgramDrafter(), ModelLevel(tiny, tokenizer=t0), ModelLevel(mxfp4, tokenizer=t1),
                       ModelLevel(bf16, tokenizer=t1)], policy="cost", draft_max=8)
    result = mlspecqd.apps.generation.generate(cascade, t1, prompt_ids, 128).run()

Greedy output is bit-identical to plain greedy decoding of the target (given batch-invariant models);
sampled output follows the target's distribution exactly. See levels.py for how a round works,
policies.py for the draft-length policies, verification.py for the acceptance rule.
"""

from mlspecqd.speculative.cascade import Cascade, CascadeError, VocabularyMismatchError
from mlspecqd.speculative.levels import Decoding, LanguageModel, Level, LevelStats, Membership, ModelLevel, Proposal
from mlspecqd.speculative.ngram import NgramDrafter
from mlspecqd.speculative.policies import (
    POLICIES,
    POLICY_NAMES,
    ConfidenceDraftLength,
    CostDraftLength,
    DraftLengthPolicy,
    ExpertForwardTimeModel,
    FixedDraftLength,
    ForwardTimeModel,
    HeuristicDraftLength,
    PolicyError,
    TimeModel,
    make_policy,
    policy_class,
)

# Drafters that need no model, by the name a draft spec gives them (mlspecqd.load(drafts=[...]), --draft).
MODEL_FREE_DRAFTERS: dict[str, type[Level]] = {"ngram": NgramDrafter}

__all__ = [
    "MODEL_FREE_DRAFTERS",
    "POLICIES",
    "POLICY_NAMES",
    "Cascade",
    "CascadeError",
    "ConfidenceDraftLength",
    "CostDraftLength",
    "Decoding",
    "DraftLengthPolicy",
    "ExpertForwardTimeModel",
    "FixedDraftLength",
    "ForwardTimeModel",
    "HeuristicDraftLength",
    "LanguageModel",
    "Level",
    "LevelStats",
    "Membership",
    "ModelLevel",
    "NgramDrafter",
    "PolicyError",
    "Proposal",
    "TimeModel",
    "VocabularyMismatchError",
    "make_policy",
    "policy_class",
]
