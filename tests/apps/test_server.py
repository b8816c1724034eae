"""`mlspecqd serve` as a real process on 127.0.0.1, talked to with the official OpenAI client and with
raw HTTP for what a client library would never send."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType

from support.llm_fixtures import write_chat_model

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("mlspecqd.engine.model")

MESSAGES = [{"role": "user", "content": "Hello there"}]
# On the slow model, greedy, this question is answered with thousands of tokens and no end-of-text token.
LONG_QUESTION = [{"role": "user", "content": "Tell me a long story"}]


@contextmanager
def running_server(model: Path, *options: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """A `mlspecqd serve` process on a free port of 127.0.0.1; yields it and its base URL."""
    process = subprocess.Popen([sys.executable, "-m", "mlspecqd", "serve", "-m", str(model), "--port", "0",
                                "--threads", "1", *options],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        if "http://" not in line:
            process.kill()
            raise AssertionError(f"the server did not start: {line}{process.stderr.read()}")
        url = line.strip().rsplit(" ", 1)[-1]
        # Keep reading stderr so that the server never blocks on a full pipe.
        threading.Thread(target=process.stderr.read, daemon=True).start()
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def raw_request(url: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("server-models")
    write_chat_model(folder / "target.gguf", {"context_length": 1024}, seed=1)
    write_chat_model(folder / "slow.gguf", {"context_length": 16384, "d_model": 512, "n_heads": 8, "n_kv_heads": 2,
                                           "d_ff": 1536, "n_layers": 2}, seed=1)
    # A draft that agrees with the target often: the same weights, stored in 8 bits.
    write_chat_model(folder / "draft.gguf", {"context_length": 1024}, seed=1, tensor_type=GGMLQuantizationType.Q8_0)
    return {name: folder / f"{name}.gguf" for name in ("target", "slow", "draft")}


@pytest.fixture(scope="module")
def server(models) -> Iterator[str]:
    with running_server(models["target"], "--draft", str(models["draft"])) as (_, url):
        yield url


def test_chat_completion_streamed_and_not_give_the_same_text(server):
    api = client(server)
    whole = api.chat.completions.create(model="target.gguf", messages=MESSAGES, max_tokens=24)
    assert whole.object == "chat.completion" and whole.model == "target.gguf"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0 and whole.usage.prompt_tokens > 0
    pieces = []
    finish = None
    for chunk in api.chat.completions.create(model="target.gguf", messages=MESSAGES, max_tokens=24, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason


def test_completion_matches_the_same_request_streamed(server):
    api = client(server)
    whole = api.completions.create(model="target.gguf", prompt="Hello", max_tokens=20)
    streamed = "".join(chunk.choices[0].text for chunk in
                       api.completions.create(model="target.gguf", prompt="Hello", max_tokens=20, stream=True))
    assert streamed == whole.choices[0].text and whole.usage.completion_tokens == 20
    body = whole.model_dump()
    assert body["timings"]["predicted_n"] == 20 and len(body["timings"]["levels"]) == 2  # draft and target


@pytest.fixture(scope="module")
def plain_server(models) -> Iterator[str]:
    with running_server(models["target"], "--no-speculation") as (_, url):
        yield url


def test_sampling_fields_and_seed_reproduce_a_run(plain_server):
    # Without drafts: with them, which random draws a token takes depends on the draft lengths the cost
    # policy picks from measured times, so a seed fixes the distribution but not the sample.
    api = client(plain_server)
    runs = [api.completions.create(model="target.gguf", prompt="Hello", max_tokens=16, temperature=1.0, seed=5,
                                   extra_body={"top_k": 0, "min_p": 0.0}).choices[0].text for _ in range(2)]
    assert runs[0] == runs[1]


def test_models_and_health(server):
    listed = client(server).models.list()
    assert [model.id for model in listed.data] == ["target.gguf"]
    status, _, body = raw_request(server, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_an_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError, match=r"model_not_found|not served"):
        client(server).chat.completions.create(model="gpt-17", messages=MESSAGES, max_tokens=4)


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"messages": MESSAGES, "max_tokens": "many"}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": MESSAGES, "max_tokens": 10**9}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": MESSAGES, "temperature": -1}).encode(), 400, "temperature"),
    (json.dumps({"messages": MESSAGES, "stream": "yes"}).encode(), 400, "stream"),
    (json.dumps({"messages": MESSAGES, "n": 3}).encode(), 400, "n:"),
    (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(), 400, "text parts"),
    (json.dumps({"messages": MESSAGES, "padding": "x" * (1 << 21)}).encode(), 413, "bytes"),
])
def test_malformed_requests_get_an_openai_error(server, body, status, message):
    got, _, data = raw_request(server, "POST", "/v1/chat/completions", body)
    error = json.loads(data)["error"]
    assert got == status and message in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}


def test_unknown_paths_and_methods(server):
    status, _, data = raw_request(server, "GET", "/v1/engines")
    assert status == 404 and "error" in json.loads(data)
    status, _, data = raw_request(server, "GET", "/v1/chat/completions")
    assert status == 405 and "error" in json.loads(data)


def test_the_server_still_answers_after_bad_requests(server):
    for body in (b"\xff\xfe", b"{}", b"null"):
        raw_request(server, "POST", "/v1/completions", body)
    assert client(server).completions.create(model="target.gguf", prompt="Hi", max_tokens=4).usage.completion_tokens


def test_api_key_is_required_when_set(models):
    with running_server(models["target"], "--no-speculation", "--api-key", "sesame") as (_, url):
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        status, _, _ = raw_request(url, "POST", "/v1/completions", b"{}")
        assert status == 401
        assert client(url, "sesame").completions.create(prompt="Hi", model="target.gguf", max_tokens=2).choices
        status, _, _ = raw_request(url, "GET", "/health")
        assert status == 200  # health needs no key


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def health(url: str) -> dict:
    return json.loads(raw_request(url, "GET", "/health")[2])


def test_a_full_queue_answers_503_and_a_disconnect_frees_the_slot(models):
    with running_server(models["slow"], "--no-speculation", "--max-waiting", "0") as (_, url):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        long_one = http.client.HTTPConnection(host, int(port), timeout=60)
        long_one.request("POST", "/v1/chat/completions", body=json.dumps(
            {"messages": LONG_QUESTION, "max_tokens": 3000, "stream": True}),
            headers={"Content-Type": "application/json"})
        response = long_one.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")
        status, headers, data = raw_request(url, "POST", "/v1/completions",
                                            json.dumps({"prompt": "Hi", "max_tokens": 2}).encode())
        assert status == 503 and int(headers["retry-after"]) >= 1, data
        assert json.loads(data)["error"]["code"] == "server_busy"
        long_one.close()  # the client goes away: its generation stops and the slot is free
        assert wait_until(lambda: health(url)["running"] == 0, 10), health(url)
        answer = client(url).completions.create(model="slow.gguf", prompt="Hi", max_tokens=2)
        assert answer.usage.completion_tokens == 2


def test_sigterm_finishes_the_running_request_then_exits(models):
    with running_server(models["slow"], "--no-speculation") as (process, url):
        outcome = {}

        def ask() -> None:
            outcome["answer"] = client(url).chat.completions.create(model="slow.gguf", messages=LONG_QUESTION,
                                                                    max_tokens=300)

        asker = threading.Thread(target=ask)
        asker.start()
        assert wait_until(lambda: health(url)["running"] == 1, 10)
        os.kill(process.pid, signal.SIGTERM)
        asker.join(60)
        # uvicorn ends by re-raising the signal it deferred, so the process ends as SIGTERM ends it.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert outcome["answer"].usage.completion_tokens == 300


def test_serve_refuses_a_port_in_use(models):
    with running_server(models["target"], "--no-speculation") as (_, url):
        port = url.rsplit(":", 1)[-1]
        result = subprocess.run([sys.executable, "-m", "mlspecqd", "serve", "-m", str(models["target"]), "--port",
                                 port, "--threads", "1", "--no-speculation"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and "cannot listen" in result.stderr
