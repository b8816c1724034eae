"""Multi-level speculative decoding: a cascade of drafters verified level by level up to the target."""

from mlspecqd.speculative.cascade import Cascade, CascadeError, VocabularyMismatchError
from mlspecqd.speculative.levels import Decoding, LanguageModel, Level, LevelStats, ModelLevel, Proposal
from mlspecqd.speculative.ngram import NgramDrafter
from mlspecqd.speculative.policies import (
    POLICY_NAMES,
    ConfidenceDraftLength,
    CostDraftLength,
    DraftLengthPolicy,
    FixedDraftLength,
    HeuristicDraftLength,
    LinearTimeModel,
    PolicyError,
    make_policy,
)

__all__ = [
    "POLICY_NAMES",
    "Cascade",
    "CascadeError",
    "ConfidenceDraftLength",
    "CostDraftLength",
    "Decoding",
    "DraftLengthPolicy",
    "FixedDraftLength",
    "HeuristicDraftLength",
    "LanguageModel",
    "Level",
    "LevelStats",
    "LinearTimeModel",
    "ModelLevel",
    "NgramDrafter",
    "PolicyError",
    "Proposal",
    "VocabularyMismatchError",
    "make_policy",
]
