"""load(parallel=N): N lanes over the same native models, decoding together. Every answer must be exactly
the one a single-lane LLM gives (greedy with the full cascade, sampled with a seed without drafts), from
Python (generate_many), from `mlspecqd batch --parallel`, and from `mlspecqd serve --parallel`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType

import mlspecqd
from mlspecqd.apps.loading import LoadError
from support.llm_fixtures import write_chat_model

PROMPTS = ["Hello there", "the theme: the thing", "a b c d e f", "One more prompt, longer than the others are",
           "x", "Tell me a story"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("parallel-models")
    write_chat_model(folder / "target.gguf", {"context_length": 512}, seed=1)
    # A draft that agrees with the target often: the same weights, stored in 8 bits.
    write_chat_model(folder / "draft.gguf", {"context_length": 512}, seed=1, tensor_type=GGMLQuantizationType.Q8_0)
    return {"target": folder / "target.gguf", "draft": folder / "draft.gguf"}


def load(models: dict[str, Path], parallel: int, drafts: list[str] | None = None) -> mlspecqd.LLM:
    drafts = ["ngram", str(models["draft"]), "mxfp4"] if drafts is None else drafts
    return mlspecqd.load(str(models["target"]), drafts=drafts, threads=1, ctx=256, parallel=parallel)


def test_greedy_answers_of_the_lanes_equal_one_lane(models):
    with load(models, 1) as one:
        expected = [one.generate(prompt, 40).tokens for prompt in PROMPTS]
    with load(models, 3) as llm:
        assert len(llm.lanes) == 3
        results = llm.generate_many(PROMPTS, 40)
        stats = llm.batcher.stats
    assert [result.tokens for result in results] == expected
    assert max(stats.sequences_by_call_size) > 1, stats  # forwards were merged
    assert sum(result.timings["levels"][0]["draft_n"] for result in results) > 0  # the cascade drafted


def test_seeded_sampling_on_the_lanes_equals_one_lane(models):
    sampling = mlspecqd.SamplingParams(temperature=0.8, seed=7)
    with load(models, 1, drafts=[]) as one:
        expected = [one.generate(prompt, 30, sampling=sampling).tokens for prompt in PROMPTS]
    with load(models, 4, drafts=[]) as llm:
        assert [result.tokens for result in llm.generate_many(PROMPTS, 30, sampling=sampling)] == expected


def test_lanes_share_the_models_and_close_together(models):
    llm = load(models, 2)
    second = llm.lanes[1]
    assert second.cascade is not llm.cascade
    assert second.cascade.levels[-1].model.model is llm.cascade.levels[-1].model.model  # one set of weights
    llm.close()
    with pytest.raises(mlspecqd.GenerationError, match="is closed"):
        second.generate("Hello", 4)


def test_an_error_in_one_prompt_is_raised_after_the_others_finish(models):
    with load(models, 2) as llm, pytest.raises(mlspecqd.GenerationError, match="prompt is empty"):
        llm.generate_many(["Hello there", "", "a b c"], 8)


@pytest.mark.parametrize("parallel", [0, 65, 1.5])
def test_parallel_out_of_range_is_refused_before_loading(models, parallel):
    with pytest.raises(LoadError, match=r"parallel must be"):
        load(models, parallel)


def batch_file(path: Path) -> Path:
    lines = [{"custom_id": f"r{index}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24}}
             for index, prompt in enumerate(PROMPTS)]
    lines.insert(2, {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": 3}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def answers(path: Path) -> dict[str, object]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {record["custom_id"]: (record["response"]["body"]["choices"][0]["message"]["content"]
                                  if record["error"] is None and record["response"]["status_code"] == 200
                                  else "error") for record in records}


def test_batch_parallel_writes_the_same_answers(models, tmp_path):
    source = batch_file(tmp_path / "in.jsonl")
    outputs = {}
    for parallel in (1, 3):
        out = tmp_path / f"out-{parallel}.jsonl"
        done = subprocess.run([sys.executable, "-m", "mlspecqd", "batch", str(source), str(out), "-m",
                               str(models["target"]), "--draft", str(models["draft"]), "--threads", "1",
                               "--parallel", str(parallel)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs[parallel] = answers(out)
    assert len(outputs[3]) == len(PROMPTS) + 1 and outputs[3]["bad"] == "error"
    assert outputs[3] == outputs[1]


def test_serve_parallel_answers_concurrent_requests_as_one_lane_does(models):
    from test_server import client, health, running_server

    with load(models, 1, drafts=[str(models["draft"])]) as one:
        expected = [one.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=20)
                    ["choices"][0]["message"]["content"] for prompt in PROMPTS]
    with running_server(models["target"], "--draft", str(models["draft"]), "--parallel", "3") as (_, url):
        assert health(url)["parallel"] == 3
        got: list[str | None] = [None] * len(PROMPTS)

        def ask(index: int) -> None:
            reply = client(url).chat.completions.create(
                model="target.gguf", messages=[{"role": "user", "content": PROMPTS[index]}], max_tokens=20)
            got[index] = reply.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(PROMPTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert got == expected
