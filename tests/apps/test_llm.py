"""The LLM object and ChatSession on deterministic stand-in models with a real GGUF tokenizer: response
shapes, streaming, stop strings, seeds, lossless drafts, chat cache reuse, bad requests; and (real_model)
load() on the real checkpoints."""

import pytest

import mlspecqd
from mlspecqd import ChatSession, GenerationError, SamplingParams
from mlspecqd.apps.chat_template import ChatTemplateError
from mlspecqd.apps.llm import LLM
from mlspecqd.engine.sampling import SamplingParamsError
from mlspecqd.speculative import Cascade, ModelLevel, NgramDrafter
from mlspecqd.tokenizer import Tokenizer
from support.fake_models import FakeLanguageModel
from support.llm_fixtures import END_OF_TEXT, VOCAB, write_chat_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.from_gguf(write_chat_model(tmp_path_factory.mktemp("tokenizer") / "tiny.gguf"))


def make_llm(tokenizer, drafts=True, eos_at=None, context_length=256):
    target = FakeLanguageModel(vocab_size=VOCAB, context_length=context_length, seed=2, eos_id=END_OF_TEXT,
                               eos_at=eos_at)
    levels = [ModelLevel(target, tokenizer=tokenizer)]
    if drafts:
        levels = [NgramDrafter(), ModelLevel(target.noisy(1.0, seed=9), tokenizer=tokenizer), *levels]
    return LLM(Cascade(levels, policy="fixed", draft_max=4), tokenizer, "fake")


def test_generate_result_and_stream_agree(tokenizer):
    llm = make_llm(tokenizer)
    result = llm.generate("Hello there", max_tokens=40)
    assert len(result.tokens) == 40 and result.finish_reason == "length"
    assert result.text == tokenizer.decode(result.tokens)
    generation = llm.generate("Hello there", max_tokens=40, stream=True)
    assert "".join(generation) == result.text
    assert generation.result.tokens == result.tokens
    for key in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second", "levels"):
        assert key in result.timings
    draft = result.timings["levels"][1]
    for key in ("draft_n", "draft_n_accepted", "acceptance_by_position", "mean_accepted_length",
                "share_of_wall_time"):
        assert key in draft
    assert draft["draft_n"] > 0


def test_greedy_tokens_with_drafts_equal_the_target_alone(tokenizer):
    prompt = "the theme: the thing"
    alone = make_llm(tokenizer, drafts=False).generate(prompt, max_tokens=60)
    with_drafts = make_llm(tokenizer).generate(prompt, max_tokens=60)
    assert with_drafts.tokens == alone.tokens
    assert with_drafts.timings["levels"][0]["draft_n"] + with_drafts.timings["levels"][1]["draft_n"] > 0


def test_completion_dict_has_the_openai_shape(tokenizer):
    llm = make_llm(tokenizer)
    prompt_tokens = len(llm.tokenize("Hello"))
    response = llm.create_completion("Hello", max_tokens=10)
    assert response["object"] == "text_completion" and response["id"].startswith("cmpl-")
    assert response["model"] == "fake" and isinstance(response["created"], int)
    (choice,) = response["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and isinstance(choice["text"], str)
    assert response["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 10,
                                 "total_tokens": prompt_tokens + 10}
    assert response["timings"]["predicted_n"] == 10


def test_streamed_completion_chunks_concatenate_to_the_text(tokenizer):
    llm = make_llm(tokenizer)
    whole = llm.create_completion("Hello", max_tokens=30)
    chunks = list(llm.create_completion("Hello", max_tokens=30, stream=True))
    assert all(chunk["object"] == "text_completion" and chunk["id"] == chunks[0]["id"] for chunk in chunks)
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == whole["choices"][0]["text"]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == whole["usage"] and chunks[-1]["timings"]["predicted_n"] == 30


def test_chat_completion_shape_and_stream_deltas(tokenizer):
    llm = make_llm(tokenizer, eos_at=40)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert llm.chat_prompt(messages) == "system: Be brief.<|endoftext|>user: Hi<|endoftext|>assistant: "
    response = llm.create_chat_completion(messages)
    assert response["object"] == "chat.completion" and response["id"].startswith("chatcmpl-")
    (choice,) = response["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    prompt_tokens = len(llm.chat_prompt_tokens(messages))
    assert response["usage"]["prompt_tokens"] == prompt_tokens
    assert response["usage"]["completion_tokens"] == 40 - prompt_tokens + 1  # the end token counts
    chunks = list(llm.create_chat_completion(messages, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    content = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert content == choice["message"]["content"]
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    parts = [{"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}]
    assert llm.chat_prompt(parts) == llm.chat_prompt([{"role": "user", "content": "Hi"}])


def test_stop_strings_and_max_tokens(tokenizer):
    llm = make_llm(tokenizer)
    full = llm.generate("Hello", max_tokens=40).text
    stop = full[12:15]
    stopped = llm.generate("Hello", max_tokens=40, stop=[stop, "never seen"])
    assert stopped.text == full[: full.index(stop)] and stopped.finish_reason == "stop"
    streamed = llm.generate("Hello", max_tokens=40, stop=stop, stream=True)
    assert "".join(streamed) == stopped.text
    assert len(llm.generate("Hello", max_tokens=3).tokens) == 3


def test_a_seed_reproduces_a_sampled_run(tokenizer):
    llm = make_llm(tokenizer)
    runs = [llm.generate("Hello", max_tokens=30, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed).tokens
            for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    sessions = [make_llm(tokenizer).generate("Hello", max_tokens=30, temperature=0.7, seed=7).tokens for _ in range(2)]
    assert sessions[0] == sessions[1]


@pytest.mark.parametrize("arguments, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="x" * 300), "the context holds 256"),
    (dict(prompt="Hi", max_tokens=0), "max_new_tokens"),
    (dict(prompt="Hi", max_tokens=-5), "max_new_tokens"),
    (dict(prompt="Hi", max_tokens=10**12), "max_new_tokens"),
    (dict(prompt="Hi", temperature=-0.5), "temperature"),
    (dict(prompt="Hi", top_p=0.0), "top_p"),
    (dict(prompt="Hi", stop=[""]), "stop[0]"),
    (dict(prompt="Hi", stop=5), "stop must be a string"),
])
def test_bad_requests_raise_value_errors_naming_the_argument(tokenizer, arguments, message):
    llm = make_llm(tokenizer)
    with pytest.raises((GenerationError, SamplingParamsError), match=message.replace("[", r"\[").replace("]", r"\]")):
        llm.generate(**arguments)
    with pytest.raises(ValueError):
        llm.create_completion(**arguments)


def test_chat_template_errors_are_value_errors(tokenizer):
    llm = make_llm(tokenizer)
    with pytest.raises(ChatTemplateError, match="messages"):
        llm.create_chat_completion("Hi")
    with pytest.raises(ChatTemplateError, match="text parts"):
        llm.create_chat_completion([{"role": "user", "content": [{"type": "image_url"}]}])


def test_closed_llm_refuses_work(tokenizer):
    closed = []

    class Owned:
        def close(self):
            closed.append(True)

    llm = LLM(make_llm(tokenizer).cascade, tokenizer, "fake", [Owned(), Owned()])
    with llm:
        llm.generate("Hi", max_tokens=2)
    assert closed == [True, True]
    with pytest.raises(GenerationError, match="closed"):
        llm.generate("Hi")


def test_chat_session_reuses_the_cache_of_the_conversation(tokenizer):
    llm = make_llm(tokenizer, context_length=512)
    session = ChatSession(llm, system="Be brief.", max_tokens=20)
    first = "".join(session.send("Hi"))
    first_result = session.last_result
    assert first == first_result.text and session.messages[-1] == {"role": "assistant", "content": first}
    seen = len(llm.chat_prompt_tokens(session.messages[:-1])) + len(first_result.tokens)
    second = "".join(session.send("And then?"))
    timings = session.last_result.timings
    # Everything of the first turn the target had processed is reused: only the new turn is computed.
    assert timings["cache_n"] >= seen - 1
    assert timings["prompt_n"] <= len(tokenizer.encode("<|endoftext|>user: And then?<|endoftext|>assistant: ",
                                                       parse_special=True)) + 1
    assert second == session.last_result.text
    # The same conversation from scratch gives the same answer (the cache changes nothing).
    fresh = ChatSession(make_llm(tokenizer, context_length=512), system="Be brief.", max_tokens=20)
    "".join(fresh.send("Hi"))
    assert "".join(fresh.send("And then?")) == second
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}] and session.last_result is None


def test_chat_session_keeps_a_stopped_answer_and_a_refused_message_changes_nothing(tokenizer):
    llm = make_llm(tokenizer, context_length=128)
    session = ChatSession(llm, max_tokens=50)
    stream = session.send("Hi")
    partial = next(stream) + next(stream)
    stream.close()
    assert session.messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": partial}]
    assert session.last_result is None
    before = list(session.messages)
    with pytest.raises(GenerationError, match="context holds 128"):
        session.send("x" * 200)
    assert session.messages == before
    assert "".join(session.send("Hi again")) == session.last_result.text


def test_sampling_params_object_is_accepted_by_start(tokenizer):
    llm = make_llm(tokenizer)
    generation = llm.start("Hello", 5, SamplingParams(temperature=0.5, seed=1))
    assert len(generation.run().tokens) == 5


# load() on the real checkpoints, skipped unless they are cached: the cascade of drafts changes no greedy
# token, a smaller model drafts for the larger one, a draft of another vocabulary is refused.

REAL_MODEL_MESSAGES = [{"role": "user", "content": "Write a Python function that returns the square of x."}]


@pytest.mark.real_model
def test_drafts_leave_the_greedy_answer_unchanged(qwen_small_path):
    pytest.importorskip("mlspecqd.engine.model")
    pytest.importorskip("mlspecqd.engine.quant")
    with mlspecqd.load(str(qwen_small_path), drafts=[], ctx=512) as plain:
        expected = plain.create_chat_completion(REAL_MODEL_MESSAGES, max_tokens=24)
    with mlspecqd.load(str(qwen_small_path), drafts=["ngram", "mxfp4"], ctx=512, draft_policy="fixed",
                       draft_max=4) as speculative:
        assert speculative.level_names == ["ngram", "mxfp4", "target:bf16"]
        response = speculative.create_chat_completion(REAL_MODEL_MESSAGES, max_tokens=24)
    assert response["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
    assert response["usage"] == expected["usage"]
    assert response["timings"]["levels"][1]["draft_n"] > 0


@pytest.mark.real_model
def test_a_small_model_drafts_for_the_larger_one(qwen_small_path, qwen_target_path):
    pytest.importorskip("mlspecqd.engine.model")
    with mlspecqd.load(str(qwen_target_path), drafts=[f"{qwen_small_path}:mxfp4"], ctx=256) as llm:
        assert llm.level_names == [f"{qwen_small_path}:mxfp4", "target:bf16"]
        result = llm.generate("def square(x):", max_tokens=8)
    assert len(result.tokens) == 8 and result.timings["levels"][0]["draft_n"] > 0


@pytest.mark.real_model
def test_a_draft_with_another_vocabulary_is_refused_before_loading(qwen_target_path, smollm2_path):
    pytest.importorskip("mlspecqd.engine.model")
    with pytest.raises(mlspecqd.LoadError, match="vocabulary differs"):
        mlspecqd.load(str(qwen_target_path), drafts=[str(smollm2_path)])
