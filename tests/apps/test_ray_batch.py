"""`mlspecqd batch --ray` on a Ray cluster of this machine (a head and a worker node on 127.0.0.1): every
custom_id answered once, with the local mode's greedy outputs, after an actor is killed mid-run, then the
driver, and the batch is run again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.llm_fixtures import write_chat_model
from support.real_models import real_model_path

pytest.importorskip("ray.data")
pytest.importorskip("mlspecqd.engine.model")

REQUESTS = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray = [sys.executable, "-m", "ray.scripts.scripts"]  # the workers run this interpreter, so this mlspecqd
    address = f"127.0.0.1:{free_port()}"
    temp = tmp_path_factory.mktemp("ray")
    common = ["--disable-usage-stats", "--include-dashboard=false", f"--temp-dir={temp}"]
    environment = {**os.environ, "RAY_ADDRESS": ""}
    try:
        subprocess.run([*ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={address.split(':')[1]}",
                        "--num-cpus=1", *common], check=True, capture_output=True, timeout=180, env=environment)
        subprocess.run([*ray, "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        *common[:1]], check=True, capture_output=True, timeout=180, env=environment)
        yield address
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, timeout=180)


def write_requests(path: Path) -> None:
    lines = []
    for index in range(REQUESTS):
        body = {"messages": [{"role": "user", "content": f"Question number {index}"}], "max_tokens": 24}
        lines.append(json.dumps({"custom_id": f"q{index}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": body}))
    lines.append("not a request")
    path.write_text("\n".join(lines) + "\n")


def batch(model: Path, source: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlspecqd", "batch", str(source), str(out), "-m", str(model),
                             "--no-speculation", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def actor_pids() -> list[int]:
    """Processes of this user whose command line names the batch actor class."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"BatchAnswerer" in command:
                pids.append(int(entry.name))
    return pids


def answers(out: Path) -> dict[str, list[dict]]:
    by_id: dict[str, list[dict]] = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        by_id.setdefault(record["custom_id"], []).append(record)
    return by_id


def text_of(record: dict) -> str | None:
    response = record["response"]
    if response is None or response["status_code"] != 200:
        return None
    return response["body"]["choices"][0]["message"]["content"]


@pytest.fixture(params=["synthetic", pytest.param("smollm2-135m", marks=pytest.mark.real_model)])
def model(request, tmp_path) -> Path:
    if request.param == "synthetic":
        return write_chat_model(tmp_path / "model.gguf", {"context_length": 1024}, seed=1)
    return real_model_path(request.param)


def test_killed_actor_and_rerun_answer_every_request_once(cluster, model, tmp_path):
    source = tmp_path / "requests.jsonl"
    write_requests(source)
    local = tmp_path / "local.jsonl"
    assert batch(model, source, local).wait(timeout=300) == 0

    out = tmp_path / "ray.jsonl"
    first = batch(model, source, out, "--ray", cluster, "--actors", "2")
    killed = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= 4 and actor_pids():
            os.kill(actor_pids()[0], signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    _, first_errors = first.communicate(timeout=300)
    assert killed, "the batch ended before an actor could be killed"
    # Ray restarts the actor and retries its request, or the run stops with one line saying a rerun goes on.
    assert first.returncode == 0 or "a rerun answers the rest" in first_errors, first_errors
    # The driver killed in its turn: OUT keeps whole lines only, and the next run answers the rest.
    second = batch(model, source, out, "--ray", cluster, "--actors", "2")
    answered = len(out.read_text().splitlines())
    while second.poll() is None and len(out.read_text().splitlines()) < min(answered + 2, REQUESTS):
        time.sleep(0.05)
    second.kill()
    second.wait(timeout=60)
    rerun = batch(model, source, out, "--ray", cluster, "--actors", "2")
    _, errors = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, errors

    got, expected = answers(out), answers(local)
    assert set(got) == set(expected) and len(got) == REQUESTS + 1
    assert all(len(records) == 1 for records in got.values())
    for custom_id, records in expected.items():
        assert text_of(got[custom_id][0]) == text_of(records[0]), custom_id
