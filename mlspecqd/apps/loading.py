"""`load()`: a target model and its drafts, built into a speculative cascade behind an LLM.

    llm = mlspecqd.load()                                   # qwen2.5-coder-1.5b with its default drafts
    llm = mlspecqd.load("model.gguf", drafts=["ngram", "mxfp4"], threads=2)

A draft spec names one level of the cascade, smallest first:
    "ngram"                          prompt lookup (no model; only as the first draft)
    "mxfp4"                          the target's own linear weights cast to MXFP4, sharing its
                                     embedding, norms and biases (no second read of the file)
    "mxfp4-dense"                    the same, but an MoE target's experts are shared as they are
                                     (its BF16 experts too): the smallest self-draft of a mixed target
    "PATH-OR-NAME[:mxfp4|:bf16]"     another GGUF (or named model) with the target's vocabulary,
                                     run in BF16 unless :mxfp4 is given
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlspecqd import _native, hub
from mlspecqd.apps.expert_profile import profile_path, read_profile
from mlspecqd.apps.llm import LLM
from mlspecqd.engine import kernel_choice, mixed_experts
from mlspecqd.engine.batching import ForwardBatcher, SequenceSlot
from mlspecqd.engine.model import BF16_WEIGHTS_SHARE_OF_MEMORY, PRECISIONS, Model
from mlspecqd.gguf import open_gguf
from mlspecqd.speculative import MODEL_FREE_DRAFTERS, Cascade, ModelLevel
from mlspecqd.speculative.levels import LanguageModel
from mlspecqd.speculative.policies import check_draft_max, policy_class
from mlspecqd.tokenizer import Tokenizer
from mlspecqd.validation import whole_number

# Most sequences one load decodes together (each holds key/value caches of ctx positions per model).
MAX_PARALLEL = 64
# The target's own MXFP4 copy: every linear weight cast, or ("mxfp4-dense") all but the experts.
SELF_DRAFTS = ("mxfp4", "mxfp4-dense")
_SPEC_FORMS = (f"{', '.join(repr(name) for name in [*MODEL_FREE_DRAFTERS, *SELF_DRAFTS])} or "
               "'PATH-OR-NAME[:mxfp4|:bf16]'")


class LoadError(ValueError):
    """A load() argument that cannot work: a bad draft spec, a draft with another vocabulary, a bad
    thread count or context length. The message names the argument and the file."""


@dataclass(frozen=True)
class DraftSpec:
    """One parsed draft spec: kind "model-free" (a name in MODEL_FREE_DRAFTERS), "self" (the target cast
    to `precision`; its experts too where cast_experts) or "model"."""

    text: str
    kind: str
    model: str | None = None
    precision: str | None = None
    cast_experts: bool = True

    @classmethod
    def parse(cls, text: str) -> DraftSpec:
        if not isinstance(text, str) or not text.strip():
            raise LoadError(f"draft spec {text!r}: expected {_SPEC_FORMS}")
        if text in MODEL_FREE_DRAFTERS:
            return cls(text, "model-free")
        if text in SELF_DRAFTS:
            return cls(text, "self", precision="mxfp4", cast_experts=text == "mxfp4")
        model, precision = text, "bf16"
        name, _, suffix = text.rpartition(":")
        if name and suffix in PRECISIONS:
            model, precision = name, suffix
        if model not in hub.NAMED_MODELS and not Path(model).expanduser().is_file():
            known = ", ".join(hub.NAMED_MODELS)
            raise LoadError(f"draft spec {text!r}: '{model}' is no file and no named model ({known}); "
                            f"other specs: {', '.join(repr(name) for name in [*MODEL_FREE_DRAFTERS, *SELF_DRAFTS])}")
        return cls(text, "model", model, precision)


def parse_draft_specs(drafts: Sequence[str]) -> list[DraftSpec]:
    """Parse and order-check a list of draft specs (smallest first; a model-free drafter only first)."""
    if isinstance(drafts, str):
        raise LoadError(f"drafts must be a list of specs, not the string {drafts!r} (write [{drafts!r}])")
    specs = [DraftSpec.parse(text) for text in drafts]
    for index, spec in enumerate(specs):
        if spec.kind == "model-free" and index != 0:
            raise LoadError(f"draft spec {spec.text!r} at position {index + 1}: a model-free drafter cannot verify "
                            "another draft, so it must come first (drafts go smallest first)")
    return specs


def check_threads(threads: int | None) -> int:
    """The thread count to use: `threads`, or the number of physical cores when None."""
    if threads is None:
        return _native.default_num_threads()
    return whole_number("threads", threads, LoadError, low=1)


def load(model: str | os.PathLike[str] = hub.DEFAULT_MODEL, drafts: Sequence[str] | None = None,
         threads: int | None = None, ctx: int = 4096, draft_policy: str = "cost", draft_max: int = 8,
         precision: str = "bf16", parallel: int = 1, memory_budget: int | None = None,
         bf16_experts: float | None = None, expert_profile: str | os.PathLike[str] | None = None) -> LLM:
    """Load a model (a GGUF path or a named model, pulled if missing) with its drafts as an LLM.

    drafts: None = the named model's default drafts (none for a plain path); [] = no speculation; else
    a list of draft specs, smallest first (see the module docstring). threads: the one native thread
    pool every level shares (default: physical cores). ctx: context length in tokens (capped at the
    model's own). draft_policy: how many tokens each draft proposes per round, one of
    mlspecqd.speculative.POLICY_NAMES, at most draft_max. precision: the target's linear weights,
    "bf16" or "mxfp4". parallel: sequences decoded together (LLM.lanes; LLM.generate_many), each with
    its own cascade and key/value caches over the same weights.

    memory_budget: bytes each model file's BF16 copy is measured against (default: the memory available
    as it loads). A Mixture-of-Experts model whose BF16 weights would take more than 80% of it keeps its
    experts in MXFP4 (as stored, or cast one stack at a time) and everything else in BF16; dense models
    load the same whatever the budget (Model.load, experts_fit_in_bf16). Where the budget holds some of
    the experts in BF16 but not all, and the model has an expert profile (router counts: `expert_profile`,
    or MODEL.gguf.expert-rows.json beside the file, written by `mlspecqd profile-experts`), the most used
    experts are BF16 and the others MXFP4 (mlspecqd.engine.mixed_experts); without a profile, all MXFP4.

    bf16_experts: for an MoE target, the fraction of its experts to hold in BF16 (0 to 1), the most used
    first by its expert profile (needed unless 0 or 1); refused where it does not fit the memory_budget.
    `precision` applies to the target's other linear weights. An "mxfp4" draft shares the target's
    MXFP4 experts and holds its own MXFP4 copies of the BF16 ones only.

    Bad arguments raise ValueError subclasses (LoadError, hub.ModelNotFoundError, gguf.GGUFError,
    TokenizerError, ...) before the big weights are read.
    """
    policy_class(draft_policy)
    check_draft_max(draft_max)
    thread_count = check_threads(threads)
    whole_number("ctx", ctx, LoadError, low=2)
    whole_number("parallel", parallel, LoadError, low=1, high=MAX_PARALLEL)
    if memory_budget is not None:
        whole_number("memory_budget", memory_budget, LoadError, low=1)
    if precision not in PRECISIONS:
        raise LoadError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    name = os.fspath(model)
    if drafts is None:
        drafts = hub.NAMED_MODELS[name].default_drafts if name in hub.NAMED_MODELS else ()
    specs = parse_draft_specs(drafts)
    for spec in specs:
        if precision == "mxfp4" and spec.kind == "self":
            raise LoadError(f"draft spec {spec.text!r}: the target already runs in mxfp4, so its MXFP4 copy would "
                            "be itself")

    target_path = hub.resolve(name)
    target_bf16_experts = _chosen_bf16_experts(target_path, precision, memory_budget, bf16_experts, expert_profile)
    tokenizer = Tokenizer.from_gguf(target_path)
    draft_paths = {spec.text: hub.resolve(spec.model) for spec in specs if spec.kind == "model"}
    draft_tokenizers = {}
    for spec_text, path in draft_paths.items():
        draft_tokenizers[spec_text] = Tokenizer.from_gguf(path)
        difference = draft_tokenizers[spec_text].same_vocabulary(tokenizer)
        if difference is not None:
            raise LoadError(f"draft {spec_text!r} ({path}): its vocabulary differs from the target's "
                            f"({target_path}): {difference}")

    _native.set_num_threads(thread_count)
    pinned = kernel_choice.pinned_choice()
    if pinned is not None:
        _native.set_isa(pinned.isa)  # the target's table too
    models: list[Model] = []
    try:
        target = Model.load(target_path, precision, ctx, memory_budget=memory_budget,
                            bf16_experts=target_bf16_experts)
        models.append(target)
        if pinned is not None:  # one choice at every row count: the target stays exact
            target.set_kernel_plan(kernel_choice.KernelPlan((pinned,) * len(kernel_choice.ROW_CLASSES)))
        # (spec, model, tokenizer) per draft level, smallest first; model-free drafters have no model.
        draft_levels: list[tuple[DraftSpec, Model | None, Tokenizer | None]] = []
        for spec in specs:
            if spec.kind == "model-free":
                draft_levels.append((spec, None, None))
                continue
            if spec.kind == "self":
                draft = target.sibling(spec.precision, cast_experts=spec.cast_experts)  # casts, shares the rest
                draft_tokenizer = tokenizer
            else:
                draft = Model.load(draft_paths[spec.text], spec.precision, ctx, memory_budget=memory_budget)
                draft_tokenizer = draft_tokenizers[spec.text]
            models.append(draft)
            draft.set_kernel_plan(kernel_choice.choose_draft_plan(draft.spec, draft.tensors))
            draft_levels.append((spec, draft, draft_tokenizer))

        def cascade(sequence: Callable[[Model], LanguageModel]) -> Cascade:
            levels = [MODEL_FREE_DRAFTERS[spec.text]() if draft is None
                      else ModelLevel(sequence(draft), name=spec.text, tokenizer=draft_tokenizer)
                      for spec, draft, draft_tokenizer in draft_levels]
            levels.append(ModelLevel(sequence(target), name=f"target:{precision}", tokenizer=tokenizer))
            return Cascade(levels, policy=draft_policy, draft_max=draft_max)

        if parallel == 1:
            cascades, batcher = [cascade(lambda model: model)], None
        else:
            batcher = ForwardBatcher()
            cascades = [cascade(lambda model, lane=lane: SequenceSlot(model, lane, batcher))  # type: ignore[misc]
                        for lane in range(parallel)]
    except BaseException:
        for loaded in models:
            loaded.close()
        raise
    model_name = name if name in hub.NAMED_MODELS else target_path.name
    return LLM(cascades[0], tokenizer, model_name, models, lane_cascades=cascades[1:], batcher=batcher)


def _chosen_bf16_experts(path: Path, precision: str, memory_budget: int | None, fraction: float | None,
                         expert_profile: str | os.PathLike[str] | None) -> np.ndarray | None:
    """Which of an MoE target's experts to hold in BF16 (see load()), or None where Model.load's own rule
    decides (no fraction, no budget; a dense model; a budget that asks for a mix without a profile)."""
    with open_gguf(path) as gguf_file:
        spec = gguf_file.spec
        if not spec.is_moe:
            if fraction is not None or expert_profile is not None:
                raise LoadError(f"bf16_experts / expert_profile: {path} has no experts")
            return None
        profile = profile_path(path) if expert_profile is None else Path(expert_profile)
        if expert_profile is not None and not profile.is_file():
            raise LoadError(f"expert_profile: no file {profile}")
        if fraction is None and memory_budget is None:
            return None
        try:
            if fraction is not None:
                mixed_experts.expert_count_for_fraction(fraction, 1)  # a bad fraction is named before the profile
            rows = read_profile(profile, spec) if profile.is_file() else None
            weight_budget = None if memory_budget is None else BF16_WEIGHTS_SHARE_OF_MEMORY * memory_budget
            if fraction is None and rows is None:
                return None
            sizes = mixed_experts.expert_bytes(gguf_file, precision)
            return mixed_experts.choose_bf16_experts(sizes, weight_budget, fraction, rows)
        except mixed_experts.ExpertPrecisionError as error:
            raise LoadError(f"{path}: {error}") from None
