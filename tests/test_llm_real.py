"""load() on the real checkpoints: the cascade of drafts changes no greedy token, chat answers end at the
end of the turn. Skipped unless the models are cached."""

import pytest

import mlspecqd

pytest.importorskip("mlspecqd.engine.model")
pytestmark = pytest.mark.real_model

MESSAGES = [{"role": "user", "content": "Write a Python function that returns the square of x."}]


def test_drafts_leave_the_greedy_answer_unchanged(qwen_small_path):
    pytest.importorskip("mlspecqd.engine.quant")
    with mlspecqd.load(str(qwen_small_path), drafts=[], ctx=512) as plain:
        expected = plain.create_chat_completion(MESSAGES, max_tokens=24)
    with mlspecqd.load(str(qwen_small_path), drafts=["ngram", "mxfp4"], ctx=512, draft_policy="fixed",
                       draft_max=4) as speculative:
        assert speculative.level_names == ["ngram", "mxfp4", "target:bf16"]
        response = speculative.create_chat_completion(MESSAGES, max_tokens=24)
    assert response["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
    assert response["usage"] == expected["usage"]
    assert response["timings"]["levels"][1]["draft_n"] > 0


def test_a_small_model_drafts_for_the_larger_one(qwen_small_path, qwen_target_path):
    with mlspecqd.load(str(qwen_target_path), drafts=[f"{qwen_small_path}:mxfp4"], ctx=256) as llm:
        assert llm.level_names == [f"{qwen_small_path}:mxfp4", "target:bf16"]
        result = llm.generate("def square(x):", max_tokens=8)
    assert len(result.tokens) == 8 and result.timings["levels"][0]["draft_n"] > 0


def test_a_draft_with_another_vocabulary_is_refused_before_loading(qwen_target_path, smollm2_path):
    with pytest.raises(mlspecqd.LoadError, match="vocabulary differs"):
        mlspecqd.load(str(qwen_target_path), drafts=[str(smollm2_path)])
