"""The command line as a user meets it: exit code 0 on success, 2 with a one-line message on bad input
and no traceback. `convert` and `pull` on tiny GGUF files; `generate | chat | batch` on tiny synthetic
GGUF models: streamed text, --json, lossless drafts, the chat loop through a pipe and a terminal, batch
resume after a kill."""

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from gguf import GGMLQuantizationType

import mlspecqd
from mlspecqd.gguf import open_gguf
from support.gguf_fixtures import write_model_gguf
from support.llm_fixtures import VOCAB, write_chat_model


def run_cli(*args, input=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "mlspecqd", *args], capture_output=True, text=True, input=input,
                          timeout=timeout)


def test_convert_to_bf16_round_trips(tmp_path):
    source = tmp_path / "tiny.gguf"
    write_model_gguf(source, "qwen2")
    out = tmp_path / "tiny-bf16.gguf"
    result = run_cli("convert", str(source), str(out), "--type", "bf16")
    assert result.returncode == 0, result.stderr
    with open_gguf(source) as original, open_gguf(out) as converted:
        assert converted.metadata["tokenizer.ggml.tokens"] == original.metadata["tokenizer.ggml.tokens"]
        name = "blk.0.ffn_up.weight"
        assert np.array_equal(converted.tensor_bf16(name), original.tensor_bf16(name))


def test_convert_bad_input_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(3))
    out = tmp_path / "out.gguf"
    result = run_cli("convert", str(bad), str(out), "--type", "bf16")
    assert result.returncode == 2
    assert "bad.gguf" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [bad]


def test_pull_unknown_name_exits_2():
    result = run_cli("pull", "no-such-model")
    assert result.returncode == 2
    assert "unknown model 'no-such-model'" in result.stderr


def test_convert_to_mxfp4_casts_linear_weights_only(tmp_path):
    source = tmp_path / "tiny.gguf"
    write_model_gguf(source, "llama")
    out = tmp_path / "tiny-mxfp4.gguf"
    result = run_cli("convert", str(source), str(out), "--type", "mxfp4")
    assert result.returncode == 0, result.stderr
    with open_gguf(out) as converted:
        assert converted.tensors["blk.0.ffn_up.weight"].ggml_type.name == "MXFP4"
        assert converted.tensors["token_embd.weight"].ggml_type.name == "BF16"


# generate, chat and batch on tiny synthetic models.

LONG_QUESTION = "Tell me a long story"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    # The synthetic GGUF models need the native decoder to run.
    pytest.importorskip("mlspecqd.engine.model")
    folder = tmp_path_factory.mktemp("models")
    long_context = {"context_length": 4096}
    write_chat_model(folder / "target.gguf", long_context, seed=1)
    # A draft that agrees with the target often: the same weights (same seed), stored in 8 bits.
    write_chat_model(folder / "draft.gguf", long_context, seed=1, tensor_type=GGMLQuantizationType.Q8_0)
    write_chat_model(folder / "other-vocab.gguf", {"vocab_size": VOCAB + 32})
    # Wider, so an answer takes long enough to be interrupted: greedy, it answers LONG_QUESTION with
    # 16,000 tokens without an end-of-text token.
    write_chat_model(folder / "slow.gguf", {"context_length": 16384, "d_model": 512, "n_heads": 8, "n_kv_heads": 2,
                                           "d_ff": 1536, "n_layers": 2}, seed=1)
    return {name: str(folder / f"{name}.gguf") for name in ("target", "draft", "other-vocab", "slow")}


def generate_json(models, *args):
    result = run_cli("generate", "-m", models["target"], "--threads", "1", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_generate_streams_the_text_of_the_json_run(models):
    output = generate_json(models, "-p", "Hello there", "-n", "24", "--no-speculation")
    assert output["finish_reason"] == "length" and len(output["tokens"]) == 24
    assert output["levels"] == ["target:bf16"]
    assert output["timings"]["predicted_n"] == 24 and output["timings"]["prompt_n"] > 0
    streamed = run_cli("generate", "-m", models["target"], "-p", "Hello there", "-n", "24", "--no-speculation", "-v")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == output["text"] + "\n"
    assert "tok/s" in streamed.stderr and "level 0 target:bf16" in streamed.stderr


def test_greedy_tokens_with_drafts_equal_the_target_alone(models):
    plain = generate_json(models, "-p", "the theme of the thing", "-n", "48", "--no-speculation")
    drafts = ["--draft", "ngram", "--draft", models["draft"]]
    try:
        import mlspecqd.engine.quant  # noqa: F401  (the MXFP4 cast)
        drafts += ["--draft", "mxfp4"]
    except ImportError:
        pass
    speculative = generate_json(models, "-p", "the theme of the thing", "-n", "48", "--draft-policy", "fixed",
                                "--draft-max", "4", *drafts)
    assert speculative["tokens"] == plain["tokens"]
    levels = speculative["timings"]["levels"]
    assert len(levels) == len(drafts) // 2 + 1
    assert levels[1]["draft_n"] > 0 and levels[1]["draft_n_accepted"] > 0


def test_generate_chat_wraps_the_prompt_in_the_template(models):
    chat = generate_json(models, "-p", "Hi", "-n", "5", "--chat", "--no-speculation")
    from mlspecqd.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(models["target"])
    prompt = tokenizer.encode("user: Hi<|endoftext|>assistant: ", add_special=False, parse_special=True)
    assert chat["timings"]["prompt_n"] == len(prompt)


@pytest.mark.parametrize("args, message", [
    (["-p", "x" * 5000], "the context holds"),
    (["-p", ""], "the prompt is empty"),
    (["-p", "   "], "the prompt is empty"),
    (["-p", "Hi", "-n", "-3"], "argument -n/--max-tokens: must be in [1,"),
    (["-p", "Hi", "-n", "99999999999"], "argument -n/--max-tokens: must be in [1,"),
    (["-p", "Hi", "-n", "many"], "expected a whole number"),
    (["-p", "Hi", "--temp", "-1"], "temperature must be in [0, inf)"),
    (["-p", "Hi", "--threads", "0"], "argument --threads: must be in [1,"),
    (["-p", "Hi", "--draft", "nosuch:mxfp4"], "draft spec 'nosuch:mxfp4': 'nosuch' is no file"),
    (["-p", "Hi", "--draft", "mxfp4", "--draft", "ngram"], "it must come first"),
    (["-p", "Hi", "--draft", "ngram", "--no-speculation"], "contradict"),
    (["-f", "/no/such/prompt.txt"], "-f /no/such/prompt.txt: cannot read it"),
    (["-p", "Hi", "-m", "/no/such/model.gguf"], "no such file, and not a named model"),
])
def test_bad_input_exits_2_with_one_line(models, args, message):
    if "-m" not in args:
        args = [*args, "-m", models["target"]]
    result = run_cli("generate", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_a_draft_with_another_vocabulary_is_named(models):
    result = run_cli("generate", "-m", models["target"], "-p", "Hi", "--draft", models["other-vocab"])
    assert result.returncode == 2
    assert "other-vocab.gguf" in result.stderr and "vocabulary differs" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_through_a_pipe_answers_line_by_line(models):
    args = ["chat", "-m", models["target"], "--threads", "1", "-n", "6", "--no-speculation", "--system", "Terse."]
    result = run_cli(*args, input="Hi\n/stats\n/reset\nHi\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    answer = lines[0]
    assert lines[1].startswith("prompt: ") and "tok/s" in lines[2]
    assert "(conversation reset)" in lines and lines.count(answer) == 2
    with mlspecqd.load(models["target"], drafts=[], threads=1) as llm:
        reply = llm.create_chat_completion([{"role": "system", "content": "Terse."}, {"role": "user", "content": "Hi"}],
                                           max_tokens=6)
    assert reply["choices"][0]["message"]["content"] == answer


class Terminal:
    """The parent side of a pseudo-terminal: text read is kept until a wait consumes it."""

    def __init__(self, fd):
        self.fd, self.buffer = fd, b""

    def write(self, data):
        os.write(self.fd, data)

    def wait_for(self, marker, timeout=60):
        """Read until `marker` (b"": any byte) has come; consume everything up to and including it."""
        deadline = time.monotonic() + timeout
        while (marker not in self.buffer) if marker else not self.buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"no {marker!r} after {self.buffer[-300:]!r}")
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the terminal closed before {marker!r}; last output {self.buffer[-300:]!r}")
            self.buffer += chunk
        end = self.buffer.index(marker) + len(marker) if marker else len(self.buffer)
        self.buffer = self.buffer[end:]


def test_chat_in_a_terminal_survives_an_interrupt(models):
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat on the pseudo-terminal
        os.execv(sys.executable, [sys.executable, "-m", "mlspecqd", "chat", "-m", models["slow"], "--threads", "1",
                                  "--ctx", "16384", "--no-speculation"])
    terminal = Terminal(fd)
    try:
        terminal.wait_for(b"> ")
        terminal.write(LONG_QUESTION.encode() + b"\r")
        terminal.wait_for(LONG_QUESTION.encode() + b"\r\n")  # the echo
        terminal.wait_for(b"")  # the first piece of the answer
        os.kill(pid, signal.SIGINT)  # as Ctrl-C would, in the middle of the answer
        terminal.wait_for(b"(interrupted)", timeout=10)
        terminal.wait_for(b"\r\n> ")
        terminal.write(b"/stats\r")
        terminal.wait_for(b"no finished answer yet")
        terminal.write(b"/reset\r")
        terminal.wait_for(b"(conversation reset)")
        terminal.write(b"/exit\r")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_batch_resumes_after_a_kill(models, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    requests = [{"custom_id": f"r{index}", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"messages": [{"role": "user", "content": LONG_QUESTION}], "max_tokens": 1000}}
                for index in range(6)]
    source.write_text("".join(json.dumps(request) + "\n" for request in requests) + "not json\n")
    args = [sys.executable, "-m", "mlspecqd", "batch", str(source), str(out), "-m", models["slow"],
            "--threads", "1", "--no-speculation"]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr.readline().startswith("[1/7] r0: 1000 tokens")
        process.kill()  # while r1 is being answered
    finally:
        process.wait()
        process.stderr.close()
    done = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
    assert 1 <= len(done) < 6 and done == [f"r{index}" for index in range(len(done))]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["custom_id"] for record in records] == [f"r{index}" for index in range(6)] + ["line-7"]
    assert len({record["response"]["body"]["choices"][0]["message"]["content"] for record in records[:6]}) == 1
    assert records[-1]["error"]["code"] == "invalid_request"
    assert f"done: 7 requests: {6 - len(done)} ok, 1 failed, {len(done)} already in the output" in result.stderr


def test_batch_bad_files_exit_2(models, tmp_path):
    result = run_cli("batch", str(tmp_path / "missing.jsonl"), str(tmp_path / "out.jsonl"), "-m", models["target"])
    assert result.returncode == 2 and "no such input file" in result.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_cli("batch", str(empty), str(tmp_path / "out.jsonl"), "-m", models["target"], "--threads", "1")
    assert result.returncode == 0 and "done: 0 requests" in result.stderr
