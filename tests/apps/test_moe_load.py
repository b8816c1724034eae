"""Mixture-of-Experts targets through the public path: load() and `mlspecqd generate` on tiny MoE GGUF
files with the target's MXFP4 copy as the draft (greedy output equal to the target alone), also when the
memory budget keeps the target's experts in MXFP4; bad budgets refused."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import mlspecqd
from mlspecqd.apps.loading import LoadError
from support.llm_fixtures import write_chat_model

pytest.importorskip("mlspecqd.engine.model")

# Mixtral is llama with experts; its GGUF gives the expert width as feed_forward_length.
MOE_MODELS = {
    "qwen2moe": ("qwen2moe", {}),
    "qwen3moe": ("qwen3moe", {}),
    "mixtral": ("llama", {"n_experts": 4, "n_experts_used": 2, "expert_d_ff": 64, "d_ff": 64}),
}
PROMPT = "the theme of the thing"


@pytest.fixture(scope="module")
def moe_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moe")
    return {name: str(write_chat_model(folder / f"{name}.gguf", {"n_layers": 2, **sizes}, architecture, seed=1))
            for name, (architecture, sizes) in MOE_MODELS.items()}


@pytest.mark.parametrize("name", MOE_MODELS)
def test_mxfp4_draft_leaves_the_greedy_output_unchanged(moe_paths, name):
    with mlspecqd.load(moe_paths[name], drafts=[], threads=1) as llm:
        alone = llm.generate(PROMPT, max_tokens=32)
    with mlspecqd.load(moe_paths[name], drafts=["mxfp4"], threads=1, draft_policy="fixed", draft_max=4) as llm:
        assert llm.level_names == ["mxfp4", "target:bf16"]
        drafted = llm.generate(PROMPT, max_tokens=32)
    assert drafted.tokens == alone.tokens
    draft = drafted.timings["levels"][0]
    assert draft["draft_n"] > 0 and draft["draft_n_accepted"] > 0


def test_cli_generate_with_the_mxfp4_draft_equals_no_speculation(moe_paths):
    def generate(*args: str) -> dict:
        result = subprocess.run([sys.executable, "-m", "mlspecqd", "generate", "-m", moe_paths["qwen3moe"], "-p",
                                 PROMPT, "-n", "16", "--threads", "1", "--json", *args],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    plain = generate("--no-speculation")
    drafted = generate("--draft", "mxfp4")
    assert drafted["levels"] == ["mxfp4", "target:bf16"]
    assert len(drafted["tokens"]) == 16 and drafted["tokens"] == plain["tokens"]


def test_target_over_the_memory_budget_keeps_mxfp4_experts_and_its_draft_shares_them(moe_paths):
    with mlspecqd.load(moe_paths["qwen2moe"], drafts=[], threads=1, memory_budget=1) as llm:
        target = llm.cascade.levels[-1].model
        assert target.tensors["blk.0.ffn_up_exps.weight"].dtype == np.uint8
        assert target.tensors["blk.0.attn_q.weight"].dtype == np.uint16
        over_budget = llm.generate(PROMPT, max_tokens=32)
    with mlspecqd.load(moe_paths["qwen2moe"], drafts=["mxfp4"], threads=1, memory_budget=1, draft_policy="fixed",
                       draft_max=4) as llm:
        draft, target = (level.model for level in llm.cascade.levels)
        assert draft.tensors["blk.1.ffn_down_exps.weight"] is target.tensors["blk.1.ffn_down_exps.weight"]
        assert draft.tensors["blk.0.attn_q.weight"].dtype == np.uint8
        drafted = llm.generate(PROMPT, max_tokens=32)
    assert drafted.tokens == over_budget.tokens
    assert drafted.timings["levels"][0]["draft_n_accepted"] > 0


@pytest.mark.parametrize("budget", [0, -1, 2.5, True, "8G"])
def test_a_bad_memory_budget_is_named(moe_paths, budget):
    with pytest.raises(LoadError, match=r"memory_budget must be"):
        mlspecqd.load(moe_paths["qwen3moe"], drafts=[], memory_budget=budget)
