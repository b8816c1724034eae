"""Fuzz target: chat templates. Any text as a template rendered over a small conversation, and the
real templates (and make_seeds.py's) rendered over conversations made of the input.

    python tests/fuzz/fuzz_chat_template.py -max_total_time=600 -dict=SEEDS.dict CORPUS SEEDS

Jinja itself is instrumented, so coverage leads the fuzzer through the template language. The first
input byte picks the mode. Accepted: a string within the size budget, or a ChatTemplateError of one line;
a render that runs past libFuzzer's -timeout is a hang.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness

with _harness.instrumented(["mlspecqd.apps.chat_template", "jinja2", "markupsafe"]):
    from mlspecqd.apps.chat_template import MAX_CHARS, ChatTemplateError, render_chat

import make_seeds  # after the package: it imports mlspecqd, whose modules must be imported instrumented

TEMPLATES = make_seeds.TEMPLATES + make_seeds.real_chat_templates()
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b>there</b>"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
ROLES = ["system", "user", "assistant", "tool", "developer", "", "ipython"]


def _value(source: _harness.Bytes, depth: int = 0) -> object:
    """A JSON-like value made of the input, as a request's messages may hold."""
    kind = source.byte() % (9 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return bool(source.byte() & 1)
    if kind == 2:
        return source.integer(4, signed=True)
    if kind == 3:
        return source.integer(2) / 7.0
    if kind == 4 or kind > 6:
        return source.text(64)
    if kind == 5:
        return [_value(source, depth + 1) for _ in range(source.byte() % 4)]
    return {source.text(12): _value(source, depth + 1) for _ in range(source.byte() % 4)}


def _message(source: _harness.Bytes) -> dict[str, object]:
    message: dict[str, object] = {"role": source.choice(ROLES)}
    shape = source.byte()
    if shape % 4:
        message["content"] = source.text(200) if shape % 4 != 3 else _value(source)
    if shape & 8:
        message["tool_calls"] = [{"type": "function", "function": {"name": source.text(16),
                                                                   "arguments": _value(source)}}]
    if shape & 16:
        message[source.text(8)] = _value(source)
    return message


def test_one_input(data: bytes) -> None:
    source = _harness.Bytes(data)
    mode = source.byte() % 2
    if mode == 0:
        template = source.rest().decode("utf-8", "replace")
        messages, special = MESSAGES, SPECIAL
    else:
        template = str(source.choice(TEMPLATES))
        messages = [_message(source) for _ in range(source.byte() % 6)]
        special = {**SPECIAL, "tools": _value(source)} if source.byte() & 1 else SPECIAL
    try:
        text = render_chat(template, messages, add_generation_prompt=bool(len(data) & 1), **special)
    except ChatTemplateError as error:
        _harness.check_refusal(error)
        return
    assert isinstance(text, str) and len(text) <= MAX_CHARS


if __name__ == "__main__":
    _harness.main(test_one_input)
