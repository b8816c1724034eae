"""Mixed-precision experts through the public path: `mlspecqd profile-experts` writes router counts beside
the model, load(bf16_experts=..., memory_budget=...) holds the most used experts in BF16, the cascade
small dense draft -> the target's MXFP4 copy -> the mixed target gives the target's greedy output while
the draft shares the target's MXFP4 experts; bad values are named (exit code 2 on the command line)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import mlspecqd
from mlspecqd.apps.expert_profile import profile_path, read_profile
from mlspecqd.apps.loading import LoadError
from mlspecqd.engine import mixed_experts
from mlspecqd.engine.model import BF16_WEIGHTS_SHARE_OF_MEMORY
from mlspecqd.gguf import open_gguf
from support.llm_fixtures import write_chat_model

PROMPT = "the theme of the thing"
TEXT = "the theme of the thing is a thing of the theme; " * 40


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlspecqd", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    target = write_chat_model(folder / "target.gguf", {"n_layers": 2, "n_experts": 8, "n_experts_used": 2},
                              "qwen3moe", seed=1)
    draft = write_chat_model(folder / "draft.gguf", {"n_layers": 1}, "qwen3", seed=2)
    (folder / "calibration.txt").write_text(TEXT)
    result = cli("profile-experts", "-m", str(target), "--text", str(folder / "calibration.txt"))
    assert result.returncode == 0, result.stderr
    return {"target": str(target), "draft": str(draft), "text": str(folder / "calibration.txt")}


def test_the_profile_counts_every_routed_row(models):
    with open_gguf(models["target"]) as gguf_file:
        spec = gguf_file.spec
    profile = json.loads(profile_path(models["target"]).read_text())
    rows = read_profile(profile_path(models["target"]), spec)
    assert rows.shape == (2, 8) and (rows.sum(axis=1) == profile["tokens"] * spec.n_experts_used).all()


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_a_fraction_of_experts_in_bf16_are_the_most_used(models, fraction):
    rows = read_profile(profile_path(models["target"]), open_gguf(models["target"]).spec)
    with mlspecqd.load(models["target"], drafts=[], threads=1, bf16_experts=fraction) as llm:
        chosen = llm.models[0].bf16_experts()
    assert chosen.sum() == round(fraction * 16)
    assert np.array_equal(chosen, mixed_experts.hot_expert_mask(rows, round(fraction * 16)))


def test_the_budget_holds_as_many_bf16_experts_as_fit(models):
    with open_gguf(models["target"]) as gguf_file:
        sizes = mixed_experts.expert_bytes(gguf_file, "bf16")
    budget = math.ceil(sizes.weights(5) / BF16_WEIGHTS_SHARE_OF_MEMORY)
    with mlspecqd.load(models["target"], drafts=[], threads=1, memory_budget=budget) as llm:
        assert llm.models[0].bf16_experts().sum() == 5
        assert llm.models[0].weight_bytes <= BF16_WEIGHTS_SHARE_OF_MEMORY * budget


def test_cascade_over_a_mixed_target_gives_its_greedy_output_and_shares_its_mxfp4_experts(models):
    with mlspecqd.load(models["target"], drafts=[], threads=1, bf16_experts=0.25) as llm:
        alone = llm.generate(PROMPT, max_tokens=32)
        target_alone = mixed_experts.resident_bytes([llm.models[0].tensors])
    with mlspecqd.load(models["target"], drafts=[models["draft"], "mxfp4"], threads=1, bf16_experts=0.25,
                       draft_policy="fixed", draft_max=4) as llm:
        target, _, mxfp4 = llm.models
        drafted = llm.generate(PROMPT, max_tokens=32)
        name = "blk.1.ffn_up_exps.weight"
        hot = target.bf16_experts()[1]
        for e in range(8):
            assert (mxfp4.tensors[name][e] is target.tensors[name][e]) == (not hot[e])
        together = mixed_experts.resident_bytes([target.tensors, mxfp4.tensors])
        assert together > target_alone == mixed_experts.resident_bytes([target.tensors])
    assert drafted.tokens == alone.tokens
    small_level, mxfp4_level = drafted.timings["levels"][:2]  # the random small draft rarely agrees
    assert small_level["draft_n"] > 0 and mxfp4_level["draft_n_accepted"] > 0


def test_the_dense_only_draft_shares_every_expert(models):
    with mlspecqd.load(models["target"], drafts=[], threads=1, bf16_experts=0.5) as llm:
        alone = llm.generate(PROMPT, max_tokens=24)
    with mlspecqd.load(models["target"], drafts=["mxfp4-dense"], threads=1, bf16_experts=0.5,
                       draft_policy="fixed", draft_max=4) as llm:
        draft, target = llm.models[1], llm.models[0]
        assert llm.level_names == ["mxfp4-dense", "target:bf16"]
        for name in ("blk.0.ffn_gate_exps.weight", "blk.1.ffn_down_exps.weight"):
            assert all(mine is theirs for mine, theirs in zip(draft.tensors[name], target.tensors[name]))
        assert draft.tensors["blk.0.attn_q.weight"].dtype == np.uint8
        drafted = llm.generate(PROMPT, max_tokens=24)
    assert drafted.tokens == alone.tokens and drafted.timings["levels"][0]["draft_n_accepted"] > 0


@pytest.mark.parametrize("arguments, message", [
    ({"bf16_experts": 1.5}, r"bf16_experts must be a fraction in \[0, 1\], got 1.5"),
    ({"bf16_experts": 0.5, "memory_budget": 1}, r"bf16_experts 0.5 \(8 experts in BF16\) needs"),
    ({"expert_profile": "/nonexistent.json"}, r"expert_profile: no file /nonexistent.json"),
])
def test_bad_choices_are_named(models, arguments, message):
    with pytest.raises(LoadError, match=message):
        mlspecqd.load(models["target"], drafts=[], **arguments)


def test_a_fraction_without_a_profile_is_refused(models, tmp_path):
    bare = write_chat_model(tmp_path / "bare.gguf", {"n_layers": 2}, "qwen3moe", seed=1)
    with pytest.raises(LoadError, match=r"choosing the hot ones needs router counts \(an expert profile\)"):
        mlspecqd.load(str(bare), drafts=[], bf16_experts=0.5)
    with pytest.raises(LoadError, match=r"has no experts"):
        mlspecqd.load(models["draft"], drafts=[], bf16_experts=0.5)


def test_cli_flags_and_the_load_log(models):
    common = ["generate", "-m", models["target"], "-p", PROMPT, "-n", "8", "--threads", "1", "--json"]
    plain = cli(*common, "--no-speculation", "--bf16-experts", "0.25", "-v")
    assert plain.returncode == 0, plain.stderr
    assert "target experts in BF16: 4 of 16, the rest MXFP4" in plain.stderr
    drafted = cli(*common, "--draft", "mxfp4", "--bf16-experts", "0.25", "--memory-budget", "1G")
    assert drafted.returncode == 0, drafted.stderr
    assert json.loads(drafted.stdout)["tokens"] == json.loads(plain.stdout)["tokens"]
    for flags, message in [(["--memory-budget", "6X"], "expected a positive byte count"),
                           (["--memory-budget", "0"], "expected a positive byte count"),
                           (["--bf16-experts", "2"], "expected a fraction in [0, 1]"),
                           (["--bf16-experts", "0.5", "--memory-budget", "100"], "needs")]:
        result = cli(*common, *flags)
        assert result.returncode == 2 and message in result.stderr, result.stderr
