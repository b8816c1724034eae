"""OpenAI batch files through run_batch, on stand-in models: output shape, malformed lines, resuming."""

import io
import json

import pytest

from mlspecqd.apps.batch import BatchFileError, answered_ids, run_batch
from mlspecqd.apps.llm import LLM
from mlspecqd.speculative import Cascade, ModelLevel, NgramDrafter
from mlspecqd.tokenizer import Tokenizer
from support.fake_models import FakeLanguageModel
from support.llm_fixtures import END_OF_TEXT, VOCAB, write_chat_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.from_gguf(write_chat_model(tmp_path_factory.mktemp("tokenizer") / "tiny.gguf"))


def make_llm(tokenizer):
    target = FakeLanguageModel(vocab_size=VOCAB, context_length=256, seed=2, eos_id=END_OF_TEXT)
    levels = [NgramDrafter(), ModelLevel(target.noisy(1.0, seed=9), tokenizer=tokenizer),
              ModelLevel(target, tokenizer=tokenizer)]
    return LLM(Cascade(levels, policy="fixed", draft_max=4), tokenizer, "fake")


def chat_request(custom_id, content="Hi", **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "fake", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **body}}


def completion_request(custom_id, prompt="Hello", **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
            "body": {"prompt": prompt, "max_tokens": 6, **body}}


def write_lines(path, items):
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items))


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answers_have_the_openai_batch_output_shape(tokenizer, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [chat_request("a"), completion_request("b"), chat_request("c", temperature=-1)])
    progress = io.StringIO()
    summary = run_batch(make_llm(tokenizer), source, out, progress=progress)
    a, b, c = read_records(out)
    assert a["custom_id"] == "a" and a["id"].startswith("batch_req_") and a["error"] is None
    assert a["response"]["status_code"] == 200 and a["response"]["request_id"].startswith("req_")
    assert a["response"]["body"]["object"] == "chat.completion"
    assert a["response"]["body"]["usage"]["completion_tokens"] == 8
    assert b["response"]["body"]["object"] == "text_completion"
    assert b["response"]["body"]["usage"]["completion_tokens"] == 6
    assert c["response"]["status_code"] == 400 and "temperature" in c["response"]["body"]["error"]["message"]
    assert (summary.total, summary.succeeded, summary.failed, summary.skipped) == (3, 2, 1, 0)
    assert summary.completion_tokens == 14
    lines = progress.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("[1/3] a: 8 tokens") and "tok/s" in lines[0]
    assert "done: 3 requests: 2 ok, 1 failed" in summary.line()


def test_the_same_request_gives_the_same_answer_as_the_api(tokenizer, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [chat_request("a", "Tell me", max_tokens=12)])
    run_batch(make_llm(tokenizer), source, out)
    direct = make_llm(tokenizer).create_chat_completion([{"role": "user", "content": "Tell me"}], max_tokens=12)
    (record,) = read_records(out)
    assert record["response"]["body"]["choices"] == direct["choices"]


def test_malformed_lines_become_error_lines_named_by_custom_id_or_line_number(tokenizer, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [
        "{not json",
        "[1, 2]",
        {"method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}},
        {**chat_request("get"), "method": "GET"},
        {**chat_request("url"), "url": "/v1/embeddings"},
        {**chat_request("nobody"), "body": "text"},
        chat_request("ok"),
        chat_request("ok"),
        {"custom_id": "noprompt", "method": "POST", "url": "/v1/completions", "body": {}},
        chat_request("stream", stream=True),
        chat_request("long", "x" * 400),
    ])
    summary = run_batch(make_llm(tokenizer), source, out)
    records = {record["custom_id"]: record for record in read_records(out)}
    assert list(records) == ["line-1", "line-2", "line-3", "get", "url", "nobody", "ok", "line-8", "noprompt",
                             "stream", "long"]
    for custom_id, expected in [("line-1", "not JSON"), ("line-2", "JSON object"), ("line-3", "custom_id"),
                                ("get", "method"), ("url", "url must be"), ("nobody", "body"),
                                ("line-8", "repeats")]:
        assert records[custom_id]["response"] is None
        assert expected in records[custom_id]["error"]["message"], custom_id
    for custom_id, expected in [("noprompt", "prompt"), ("stream", "stream"), ("long", "context holds")]:
        assert records[custom_id]["error"] is None
        assert expected in records[custom_id]["response"]["body"]["error"]["message"], custom_id
    assert records["ok"]["response"]["status_code"] == 200
    assert (summary.succeeded, summary.failed) == (1, 10)


def test_a_rerun_after_a_kill_skips_what_is_done_and_repairs_a_torn_line(tokenizer, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [chat_request(f"r{index}", f"Question {index}") for index in range(5)])
    llm = make_llm(tokenizer)
    calls = []
    create = llm.create_chat_completion

    def killed_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies while working on r2
        return create(*args, **kwargs)

    llm.create_chat_completion = killed_on_the_third
    with pytest.raises(KeyboardInterrupt):
        run_batch(llm, source, out)
    assert [record["custom_id"] for record in read_records(out)] == ["r0", "r1"]
    with open(out, "a") as file:  # a kill in the middle of a write
        file.write('{"id": "batch_req_x", "custom_id": "r2", "respo')
    assert answered_ids(out) == {"r0", "r1"}
    summary = run_batch(make_llm(tokenizer), source, out)
    assert [record["custom_id"] for record in read_records(out)] == ["r0", "r1", "r2", "r3", "r4"]
    assert (summary.skipped, summary.succeeded) == (2, 3)
    again = run_batch(make_llm(tokenizer), source, out)
    assert (again.skipped, again.succeeded) == (5, 0) and len(read_records(out)) == 5


def test_empty_input_writes_an_empty_output(tokenizer, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n\n")
    summary = run_batch(make_llm(tokenizer), source, out)
    assert out.read_text() == "" and summary.total == 0
    assert summary.line().startswith("done: 0 requests")


def test_missing_input_and_folder_output_are_file_errors(tokenizer, tmp_path):
    with pytest.raises(BatchFileError, match="no such input file"):
        run_batch(make_llm(tokenizer), tmp_path / "missing.jsonl", tmp_path / "out.jsonl")
    source = tmp_path / "in.jsonl"
    write_lines(source, [chat_request("a")])
    with pytest.raises(BatchFileError, match="is a folder"):
        run_batch(make_llm(tokenizer), source, tmp_path)
