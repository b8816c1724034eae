"""Kernel choice for draft models (mlspecqd.engine.kernel_choice): candidates, timing, the cache per CPU
and model, the MLSPECQD_KERNELS pin, plans on a model, and the cascade's output with drafts on every
kernel choice (int8 activations included) equal to the target's alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mlspecqd
from mlspecqd import _native
from mlspecqd.engine import kernel_choice
from mlspecqd.engine.kernel_choice import KernelChoice, KernelChoiceError, KernelPlan
from mlspecqd.engine.model import Model
from support.llm_fixtures import write_chat_model

VECTOR_ISAS = [isa for isa in _native.supported_isas() if isa != "scalar"]
needs_vector_isa = pytest.mark.skipif(not VECTOR_ISAS, reason="this CPU runs the scalar kernels only")
PROMPT = "the theme of the thing"


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSPECQD_CACHE", str(tmp_path))
    monkeypatch.delenv(kernel_choice.PIN_VARIABLE, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_chat_model(tmp_path_factory.mktemp("kernel-choice") / "model.gguf", {"n_layers": 2}, seed=3)


def test_candidates_go_up_to_the_active_table_and_add_int8_for_mxfp4_weights():
    if not VECTOR_ISAS:
        assert kernel_choice.candidates(True) == []
        return
    same_code = {("amx", "int8"): "avx512", ("avxvnni", "bf16"): "avx2"}  # timed once, as the first
    for isa in VECTOR_ISAS:
        _native.set_isa(isa)
        tables = VECTOR_ISAS[:VECTOR_ISAS.index(isa) + 1]
        assert kernel_choice.candidates(False) == [KernelChoice(table) for table in tables
                                                   if same_code.get((table, "bf16")) not in tables]
        assert kernel_choice.candidates(True) == [KernelChoice(table, kind) for table in tables
                                                  for kind in ("bf16", "int8")
                                                  if same_code.get((table, kind)) not in tables]
    _native.set_isa("scalar")
    assert kernel_choice.candidates(True) == []


@needs_vector_isa
def test_parse_names_what_is_wrong():
    assert KernelChoice.parse(VECTOR_ISAS[0]) == KernelChoice(VECTOR_ISAS[0], "bf16")
    assert KernelChoice.parse(f" {VECTOR_ISAS[0]}:int8 ") == KernelChoice(VECTOR_ISAS[0], "int8")
    with pytest.raises(KernelChoiceError, match="MLSPECQD_KERNELS='avx2:int4': activations 'int4'"):
        KernelChoice.parse("avx2:int4")
    with pytest.raises(KernelChoiceError, match="MLSPECQD_KERNELS='scalar': this CPU runs the kernel tables"):
        KernelChoice.parse("scalar")


@needs_vector_isa
def test_draft_plan_is_timed_once_then_read_from_the_cache(cache_folder, model_path):
    with Model.load(model_path) as target, target.sibling("mxfp4") as draft:
        plan = kernel_choice.choose_draft_plan(draft.spec, draft.tensors)
        cached = json.loads((cache_folder / kernel_choice.CACHE_FILE).read_text())
        (cpu, models), = cached.items()
        assert _native.active_isa() in cpu
        (entry,) = models.values()
        assert entry["plan"] == [str(choice) for choice in plan.by_rows]
        assert entry["rows"] == list(kernel_choice.TIMED_ROWS)
        candidates = kernel_choice.candidates(True)
        assert sorted(entry["seconds"]) == sorted(str(choice) for choice in candidates)
        for i in range(len(kernel_choice.ROW_CLASSES)):  # each class takes its fastest candidate
            assert entry["seconds"][str(plan.by_rows[i])][i] == min(times[i] for times in entry["seconds"].values())
        # A remembered plan is used as it is, without timing.
        entry["plan"] = [str(candidates[-1])] * len(kernel_choice.ROW_CLASSES)
        (cache_folder / kernel_choice.CACHE_FILE).write_text(json.dumps(cached))
        assert kernel_choice.choose_draft_plan(draft.spec, draft.tensors) == KernelPlan((candidates[-1],) * 4)


@needs_vector_isa
def test_an_unreadable_cache_is_timed_again_and_rewritten(cache_folder, model_path):
    (cache_folder / kernel_choice.CACHE_FILE).write_text("{not json")
    with Model.load(model_path) as target, target.sibling("mxfp4") as draft:
        plan = kernel_choice.choose_draft_plan(draft.spec, draft.tensors)
    assert all(choice is not None for choice in plan.by_rows)
    assert json.loads((cache_folder / kernel_choice.CACHE_FILE).read_text())


@needs_vector_isa
def test_the_pin_skips_timing_and_the_cache(cache_folder, model_path, monkeypatch):
    monkeypatch.setenv(kernel_choice.PIN_VARIABLE, f"{VECTOR_ISAS[0]}:int8")
    with Model.load(model_path) as target, target.sibling("mxfp4") as draft:
        plan = kernel_choice.choose_draft_plan(draft.spec, draft.tensors)
    assert plan == KernelPlan((KernelChoice(VECTOR_ISAS[0], "int8"),) * 4)
    assert not (cache_folder / kernel_choice.CACHE_FILE).exists()


def test_a_bad_pin_stops_load_before_the_weights_are_read(cache_folder, model_path, monkeypatch):
    monkeypatch.setenv(kernel_choice.PIN_VARIABLE, "avx2:int3")
    with pytest.raises(KernelChoiceError, match="activations 'int3'"):
        mlspecqd.load(str(model_path), drafts=["mxfp4"], threads=1)


@needs_vector_isa
def test_int8_plan_changes_an_mxfp4_models_logits_a_little(model_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 200, size=12)
    with Model.load(model_path, "mxfp4") as model:
        bf16 = model.forward(tokens, 0, all_logits=True)
        model.set_kernel_plan(KernelPlan((KernelChoice(VECTOR_ISAS[-1], "int8"),) * 4))
        int8 = model.forward(tokens, 0, all_logits=True)
    assert not np.array_equal(bf16, int8)
    assert np.abs(int8 - bf16).max() < 0.05 * np.abs(bf16).max()


@needs_vector_isa
@pytest.mark.parametrize("pin", [f"{isa}:{kind}" for isa in VECTOR_ISAS for kind in ("bf16", "int8")])
def test_cascade_output_equals_the_target_alone_on_every_pinned_kernel(cache_folder, model_path, monkeypatch, pin):
    """The pin puts every model, the target included, on one choice at every row count."""
    monkeypatch.setenv(kernel_choice.PIN_VARIABLE, pin)
    pinned = KernelPlan((KernelChoice.parse(pin),) * 4)
    with mlspecqd.load(str(model_path), drafts=[], threads=1) as llm:
        alone = llm.generate(PROMPT, max_tokens=24)
    with mlspecqd.load(str(model_path), drafts=["ngram", "mxfp4"], threads=2, draft_policy="fixed",
                       draft_max=4) as llm:
        drafted = llm.generate(PROMPT, max_tokens=24)
        assert [model.kernel_plan for model in llm.models] == [pinned, pinned]
    assert drafted.tokens == alone.tokens
    assert _native.active_isa() == pin.split(":")[0]


@needs_vector_isa
def test_an_mxfp4_target_on_int8_activations_stays_exact_under_speculation(cache_folder, model_path,
                                                                         monkeypatch):
    monkeypatch.setenv(kernel_choice.PIN_VARIABLE, f"{VECTOR_ISAS[0]}:int8")
    with mlspecqd.load(str(model_path), drafts=[], precision="mxfp4", threads=1) as llm:
        alone = llm.generate(PROMPT, max_tokens=24)
    with mlspecqd.load(str(model_path), drafts=["ngram"], precision="mxfp4", threads=2, draft_policy="fixed",
                       draft_max=4) as llm:
        drafted = llm.generate(PROMPT, max_tokens=24)
        assert drafted.timings["levels"][0]["draft_n"] > 0
    assert drafted.tokens == alone.tokens


def run_info(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-m", "mlspecqd", "info"], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout


@needs_vector_isa
def test_info_lists_the_remembered_draft_plans_and_the_pin(cache_folder, model_path):
    assert "none yet" in run_info({"MLSPECQD_CACHE": str(cache_folder)})
    with Model.load(model_path) as target, target.sibling("mxfp4") as draft:
        plan = kernel_choice.choose_draft_plan(draft.spec, draft.tensors)
    out = run_info({"MLSPECQD_CACHE": str(cache_folder)})
    assert str(cache_folder / kernel_choice.CACHE_FILE) in out
    assert ", ".join(f"{rows} rows {choice}" for rows, choice in zip(kernel_choice.ROW_CLASSES, plan.by_rows)) in out
    pinned = run_info({"MLSPECQD_CACHE": str(cache_folder), kernel_choice.PIN_VARIABLE: "avx2:int8"})
    assert "MLSPECQD_KERNELS=avx2:int8 pins every draft" in pinned


@needs_vector_isa
def test_moe_drafts_are_timed_on_an_expert(cache_folder, tmp_path):
    path = write_chat_model(tmp_path / "moe.gguf", {"n_layers": 2}, "qwen3moe", seed=2)
    with Model.load(path) as target, target.sibling("mxfp4") as draft:
        weights = kernel_choice._timing_weights(draft.tensors, draft.spec.n_layers)
        assert [w.shape for w in weights] == [draft.tensors["blk.1.attn_q.weight"].shape,
                                              draft.tensors["blk.1.ffn_down_exps.weight"].shape[1:]]
        plan = kernel_choice.choose_draft_plan(draft.spec, draft.tensors)
        draft.set_kernel_plan(plan)
        assert np.isfinite(draft.forward([1, 2, 3], 0, all_logits=True)).all()


def test_native_plans_refuse_bad_choices_by_name(model_path):
    with Model.load(model_path) as model:
        native = model._native_model
        with pytest.raises(ValueError, match="set_kernel_plan: 3 choices, expected one per row class \\(4\\)"):
            native.set_kernel_plan([(None, "bf16")] * 3)
        with pytest.raises(ValueError, match="unknown instruction set 'avx9'"):
            native.set_kernel_plan([("avx9", "bf16")] * 4)
        with pytest.raises(ValueError, match="set_kernel_plan: MXFP4 activations 'fp8' are not 'bf16' or 'int8'"):
            native.set_kernel_plan([(None, "fp8")] * 4)
