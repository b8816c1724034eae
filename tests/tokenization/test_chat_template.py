"""Chat template rendering: Hugging Face template features, the sandbox, clear errors, real templates."""

from __future__ import annotations

import datetime

import pytest

from mlspecqd.apps.chat_template import ChatTemplateError, render_chat
from support.real_tokenizers import real_tokenizer

SIMPLE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m.content }}</{{ m.role }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi ü"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
]


def test_renders_messages_and_generation_prompt():
    text = render_chat(SIMPLE, CONVERSATION, bos_token="<s>")
    assert text == (
        "<s><system>Be brief.</system>\n<user>Hi ü</user>\n"
        "<assistant>Hello.</assistant>\n<user>Bye</user>\n<assistant>"
    )
    assert not render_chat(SIMPLE, CONVERSATION, add_generation_prompt=False, bos_token="").endswith("<assistant>")


def test_trims_blocks_like_hugging_face():
    template = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}"
    assert render_chat(template, CONVERSATION) == "[Hi ü]\n[Bye]\n"


def test_raise_exception_is_a_named_error():
    template = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="refused the conversation: Conversations must start with user"):
        render_chat(template, CONVERSATION)


def test_tojson_keeps_text_as_is():
    tools = [{"name": "search", "description": "Find <b>things</b> & 'more' – ü"}]
    assert render_chat("{{ tools | tojson }}", [], tools=tools) == (
        '[{"name": "search", "description": "Find <b>things</b> & \'more\' – ü"}]'
    )
    assert render_chat("{{ tools[0] | tojson(indent=2) }}", [], tools=tools).startswith('{\n  "name": "search"')


def test_strftime_now_loop_controls_and_generation_block():
    assert render_chat("{{ strftime_now('%Y') }}", []) == str(datetime.datetime.now().year)
    template = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.role }};{% endfor %}"
    assert render_chat(template, CONVERSATION) == "system;user;"
    template = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    assert render_chat(template, CONVERSATION[:2]) == "Be brief.Hi ü"


def test_syntax_error_names_the_line():
    with pytest.raises(ChatTemplateError, match="chat template line 2: syntax error"):
        render_chat("ok\n{% if %}", CONVERSATION)


def test_runtime_error_is_named():
    with pytest.raises(ChatTemplateError, match="chat template failed: UndefinedError"):
        render_chat("{{ messages[0].content.nope() }}", CONVERSATION)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",  # reaching Python internals
        "{{ messages.append({'role': 'user'}) }}",  # mutating what the caller passed
        "{{ messages[0].update(role='x') }}",
    ],
)
def test_sandbox_refuses(template):
    messages = [dict(message) for message in CONVERSATION]
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        render_chat(template, messages)
    assert messages == CONVERSATION


@pytest.mark.parametrize(
    ("template", "messages", "message"),
    [
        ("", CONVERSATION, "chat template: missing"),
        (None, CONVERSATION, "chat template: missing"),
        (SIMPLE, "hello", "messages: expected a list of dicts, got str"),
        (SIMPLE, [{"role": "user"}, "oops"], r"messages\[1\]: expected a dict, got str"),
        (SIMPLE, [{"content": "no role"}], r"messages\[0\]: needs a 'role' string"),
    ],
)
def test_bad_arguments_are_named_errors(template, messages, message):
    with pytest.raises(ChatTemplateError, match=message):
        render_chat(template, messages)


@pytest.mark.real_model
def test_qwen_template():
    tokenizer = real_tokenizer("qwen2.5-coder-0.5b")
    text = render_chat(tokenizer.chat_template, [{"role": "user", "content": "Write a sort."}])
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWrite a sort.<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.encode(text, add_special=False, parse_special=True)
    assert ids[0] == 151644 and ids.count(151645) == 2 and ids[-2:] == [77091, 198]  # "assistant", "\n"


@pytest.mark.real_model
def test_smollm2_template_adds_its_default_system_prompt():
    tokenizer = real_tokenizer("smollm2-135m")
    text = render_chat(tokenizer.chat_template, [{"role": "user", "content": "Hi"}], **tokenizer.special_token_texts())
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.real_model
def test_gemma_file_without_a_template_gets_gemma_turns():
    """The hub's gemma-3-270m carries no tokenizer.chat_template: its turn tokens select Gemma's format,
    the system message opening the first user turn, as llama.cpp's built-in "gemma" format writes it."""
    tokenizer = real_tokenizer("gemma-3-270m")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    text = render_chat(tokenizer.chat_template, messages, **tokenizer.special_token_texts())
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello!<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    ids = tokenizer.encode(text, add_special=False, parse_special=True)
    assert ids[:2] == [2, 105] and ids.count(106) == 3 and ids[-3:] == [105, 4368, 107]  # "model", "\n"
