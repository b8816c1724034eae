"""Batch lines and OUT files made to hurt: a line nested too deep for the JSON reader, values too long to
quote. Each bad line becomes its own error record and the run goes on. (tests/fuzz/fuzz_batch_request.py
searches for more.)"""

import json

import pytest

from mlspecqd.apps.batch import RequestError, answered_ids, parse_request, run_batch
from mlspecqd.apps.llm import LLM
from mlspecqd.speculative import Cascade, ModelLevel
from mlspecqd.tokenizer import Tokenizer
from support.fake_models import FakeLanguageModel
from support.llm_fixtures import END_OF_TEXT, VOCAB, write_chat_model

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    tokenizer = Tokenizer.from_gguf(write_chat_model(tmp_path_factory.mktemp("tokenizer") / "tiny.gguf"))
    target = FakeLanguageModel(vocab_size=VOCAB, context_length=64, seed=2, eos_id=END_OF_TEXT)
    return LLM(Cascade([ModelLevel(target, tokenizer=tokenizer)]), tokenizer, "fake")


def test_a_line_nested_too_deep_is_an_error_record_and_the_run_goes_on(llm, tmp_path):
    """Found while fuzzing: json.loads raised RecursionError, which ended the whole run."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Hi", "max_tokens": 2}}
    source.write_text(DEEP + "\n" + json.dumps(good) + "\n")
    summary = run_batch(llm, source, out)
    deep, answered = [json.loads(line) for line in out.read_text().splitlines()]
    assert deep["custom_id"] == "line-1" and deep["error"]["message"] == "line 1: JSON nested too deep"
    assert answered["custom_id"] == "a" and answered["response"]["status_code"] == 200
    assert (summary.succeeded, summary.failed) == (1, 1)


def test_an_out_line_nested_too_deep_is_no_record(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(DEEP + "\n" + json.dumps({"custom_id": "a"}) + "\n")
    assert answered_ids(out) == {"a"}


@pytest.mark.parametrize("field", ["method", "url"])
def test_long_values_are_quoted_short(field):
    request = {"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {}, field: "\n" * 100_000}
    with pytest.raises(RequestError) as caught:
        parse_request(json.dumps(request), 7)
    message = str(caught.value)
    assert message.startswith(f"line 7: {field}") and "\n" not in message and len(message) < 300
