"""Chat templates made to hurt: every failure, endless loop, deep recursion or size explosion is a
ChatTemplateError of one line, within bounded time and memory; ordinary templates are untouched by the
budgets. (tests/fuzz/fuzz_chat_template.py searches for more.)"""

import time
import tracemalloc

import pytest

from mlspecqd.apps import chat_template
from mlspecqd.apps.chat_template import ChatTemplateError, render_chat

MESSAGES = [{"role": "user", "content": "hi"}]


def refusal(template: str, messages=MESSAGES, **special) -> str:
    with pytest.raises(ChatTemplateError) as caught:
        render_chat(template, messages, **special)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 1100
    return message


@pytest.mark.parametrize("template, problem", [
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ 2.0 ** 5000 }}", "OverflowError"),
    ("{{ range(10 ** 6) }}", "OverflowError: Range too big"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ("{% for m in messages recursive %}{{ loop([m]) }}{% endfor %}", "RecursionError"),
    ("{{ " + "(" * 300 + "1" + ")" * 300 + " }}", "does not compile: RecursionError"),
    ("{{ " + "1 + " * 5000 + "1 }}", "does not compile: RecursionError"),
    ("{{ lipsum(10 ** 6) }}", "'lipsum' is undefined"),
    ("{{ x.__class__.__mro__ }}", "SecurityError"),
], ids=lambda value: value[:40])
def test_failures_of_any_kind_are_chat_template_errors(template, problem):
    """Found while fuzzing: ZeroDivisionError, OverflowError and RecursionError came out as themselves."""
    assert problem in refusal(template)


@pytest.mark.parametrize("template", ["{{ x ~ " + "-" * 124 + "y }}", "{{ m" + ".a" * 250 + " }}"],
                         ids=["unary-minus", "attributes"])
def test_nested_expressions_compile_in_linear_time(template):
    """Found by fuzz_chat_template (an input that took 10 seconds): Jinja's constant folding tried every
    subexpression again at each level of nesting, seconds for a few hundred levels."""
    started = time.perf_counter()
    refusal(template)  # an undefined name, or nested too deep for Python
    assert time.perf_counter() - started < 2


def test_raise_exception_text_is_one_line():
    message = refusal("{{ raise_exception('no\\nsystem\\rrole') }}")
    assert message.endswith("refused the conversation: no\\nsystem\\rrole")


def test_endless_loops_run_out_of_steps(monkeypatch):
    monkeypatch.setattr(chat_template, "MAX_STEPS", 100_000)
    started = time.perf_counter()
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    assert "more than 100000 steps" in refusal(template)
    assert "more than 100000 steps" in refusal("{% macro m() %}{% for i in range(100000) %}{% for j in range(100000) %}"
                                               "xxxxxxxx{% endfor %}{% endfor %}{% endmacro %}{{ m() }}")
    assert time.perf_counter() - started < 5


def test_slow_steps_run_out_of_time(monkeypatch):
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 0.5)
    started = time.perf_counter()
    template = "{% for i in range(100000) %}{{ (range(100000)|list|sort|reverse|list)|length }}{% endfor %}"
    assert "rendering took more than 0.5 seconds" in refusal(template)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("template", [
    "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% set ns = namespace(s=['ab']) %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% macro grow(s, n) %}{{ grow(s ~ s, n - 1) if n else s|length }}{% endmacro %}{{ grow('ab', 60) }}",
    "{{ 'a' * 10 ** 9 }}",
    "{{ ['a'] * 10 ** 9 }}",
    "{{ ([('x' * 1000000)] * 1000)|join }}",
    "{{ 9 ** 99999 }}",
    "{{ '%999999999d' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '{:999999999}'.format(1) }}",
    "{{ '{0:{1}}'.format(1, 999999999) }}",
    "{{ '%s'|format('x' * 10 ** 6) * 100 }}",
    "{{ 'a'|center(999999999) }}",
    "{{ 'a'.ljust(999999999) }}",
    "{{ (1).to_bytes(999999999, 'big') }}",
    "{{ ('a' * 10000)|replace('a', 'b' * 100000) }}",
    "{{ ('a' * 10000).replace('', 'b' * 100000) }}",
    "{{ ('\\t' * 100000).expandtabs(100000) }}",
    "{{ ('a' * 100000).translate({97: 'b' * 100000}) }}",
    "{{ ('x\\n' * 100000)|indent(100000) }}",
    "{{ [1]|batch(10 ** 9, 'x')|list }}",
    "{{ 'abc'|slice(10 ** 9)|list }}",
    "{{ messages|tojson(indent=1000) }}",
    "{{ strftime_now('%c' * 100000) }}",
    "{% set x %}{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}{% endset %}{{ x|length }}",
    "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
], ids=lambda value: value[:60])
def test_sizes_are_checked_before_they_explode(template):
    """Each of these asks for gigabytes (or more) in one step or a few dozen."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        refusal(template)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 29, f"{peak} bytes"
    assert time.perf_counter() - started < 20


def test_output_is_bounded(monkeypatch):
    monkeypatch.setattr(chat_template, "MAX_CHARS", 10_000)
    for body in ("{{ 'abcdefghijklmnop' }}", "abcdefghijklmnopq"):
        assert "wrote more than 10000 characters" in refusal("{% for i in range(1000) %}" + body + "{% endfor %}")


def test_templates_longer_than_the_limit_are_refused(monkeypatch):
    monkeypatch.setattr(chat_template, "MAX_TEMPLATE_CHARS", 1000)
    assert "1001 characters, more than 1000" in refusal("x" * 1001)


def test_what_real_templates_do_still_works():
    template = (
        "{%- set ns = namespace(system='') -%}"
        "{%- for m in messages -%}{%- if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- endif -%}"
        "{%- endfor -%}"
        "{{ bos_token }}{{ ns.system | trim }}"
        "{%- for m in messages[::-1] -%}{%- set index = (messages|length - 1) - loop.index0 -%}"
        "[{{ index }}:{{ m.role|upper }}:{{ m.content if m.content is string else m.content|tojson(indent=2) }}]"
        "{%- endfor -%}"
        "{{ '%-6s|%3d' % ('ab', 7) }}{{ '{:>5}'.format('x') }}{{ 'x' * 3 }}{{ 'a-b'.replace('-', '+') }}"
        "{{ tools|tojson }}{{ ', '.join(['p', 'q']) }}{{ (messages|map(attribute='role')|list) + ['end'] }}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    messages = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": {"parts": [1, 2]}}]
    text = render_chat(template, messages, bos_token="<s>", tools=[{"name": "f"}])
    assert text == ('<s>Be brief.[2:ASSISTANT:{\n  "parts": [\n    1,\n    2\n  ]\n}][1:USER:Hi][0:SYSTEM: Be brief. ]'
                    "ab    |  7    xxxxa+b[{\"name\": \"f\"}]p, q['system', 'user', 'assistant', 'end']<|assistant|>")


def test_a_long_conversation_renders_quickly():
    template = ("{% for m in messages %}{% set index = messages|length - loop.index0 %}"
                "<|{{ m.role }}|>{{ m.content }}{% endfor %}")
    messages = [{"role": "user", "content": "x" * 1000}] * 5000
    started = time.perf_counter()
    assert len(render_chat(template, messages)) == 5000 * (len("<|user|>") + 1000)
    assert time.perf_counter() - started < 5
