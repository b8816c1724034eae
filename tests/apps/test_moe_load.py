"""Mixture-of-Experts targets through the public path: load() and `mlspecqd generate` on tiny MoE GGUF
files with the target's MXFP4 copy as the draft (greedy output equal to the target alone)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mlspecqd
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
