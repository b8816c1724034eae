"""Fuzz target: OpenAI batch lines through parse_request and answer() on a stand-in LLM, and OUT files
through answered_ids.

    python tests/fuzz/fuzz_batch_request.py -max_total_time=600 -dict=SEEDS.dict CORPUS SEEDS

The LLM is a cascade of deterministic fake models (tests/support/fake_models.py) behind the real
tokenizer and chat template of a tiny GGUF, so each input runs in milliseconds. Accepted: every line
becomes an OUT record that is strict JSON (no NaN), with status 200 or an error whose message is one
line; answered_ids reads any OUT file without raising.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness

with _harness.instrumented(["mlspecqd.apps", "mlspecqd.engine.sampling", "mlspecqd.validation"]):
    from mlspecqd.apps.batch import RequestError, WorkItem, answer, answered_ids, parse_request
    from mlspecqd.apps.llm import LLM

from mlspecqd.speculative import Cascade, ModelLevel, NgramDrafter
from mlspecqd.tokenizer import Tokenizer
from support.fake_models import FakeLanguageModel
from support.llm_fixtures import END_OF_TEXT, VOCAB, write_chat_model

CONTEXT = 48  # tokens: every request, however long its max_tokens, ends within a few milliseconds
OUT_PATH = _harness.SCRATCH / "out.jsonl"


def _llm() -> tuple[LLM, list[FakeLanguageModel]]:
    tokenizer = Tokenizer.from_gguf(write_chat_model(_harness.SCRATCH / "chat.gguf"))
    target = FakeLanguageModel(vocab_size=VOCAB, context_length=CONTEXT, seed=2, eos_id=END_OF_TEXT, eos_at=40)
    draft = target.noisy(1.0, seed=9)
    levels = [NgramDrafter(), ModelLevel(draft, tokenizer=tokenizer), ModelLevel(target, tokenizer=tokenizer)]
    return LLM(Cascade(levels, policy="fixed", draft_max=4), tokenizer, "fake"), [draft, target]


LLM_UNDER_TEST, FAKE_MODELS = _llm()


def test_one_input(data: bytes) -> None:
    if data[:1] == b"#":  # an OUT file rather than a request line
        OUT_PATH.write_bytes(data[1:])
        assert isinstance(answered_ids(OUT_PATH), set)
        return
    line = data.decode("utf-8", "replace")  # batch files are read as UTF-8 text
    try:
        custom_id, request = parse_request(line, 1)
        item = WorkItem(1, custom_id, request)
    except RequestError as error:
        _harness.check_refusal(error)
        item = WorkItem(1, error.custom_id, None, str(error))
    for model in FAKE_MODELS:  # the stand-ins record every forward's size; the package keeps nothing per request
        model.forward_sizes.clear()
    result = answer(LLM_UNDER_TEST, item)
    json.dumps(result.record, allow_nan=False)  # what OUT gets must be strict JSON
    if result.error is not None:
        _harness.check_refusal(ValueError(result.error))


if __name__ == "__main__":
    _harness.main(test_one_input)
