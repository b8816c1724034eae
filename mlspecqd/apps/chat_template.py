"""Chat prompts: render the GGUF's tokenizer.chat_template (Jinja, as Hugging Face templates are).

Templates come from model files, so they run in Jinja's immutable sandbox: they can read what they
are given and nothing else. The environment offers what Hugging Face's apply_chat_template does:
raise_exception, strftime_now, a tojson that keeps non-ASCII text, loop controls and the
{% generation %} block.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A chat template that does not parse, fails while rendering, or rejects the messages."""


class _TemplateRaised(Exception):
    """raise_exception() called by the template itself."""


class _GenerationBlock(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %} marks the assistant's part for training masks;
    rendering just writes the body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat prompts need the plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationBlock]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(f"chat template line {error.lineno}: syntax error: {error.message}") from None


def render_chat(
    template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **special: Any
) -> str:
    """The prompt text for a conversation.

    messages: [{"role": "system"|"user"|"assistant"|..., "content": ...}, ...].
    special: further template variables, e.g. bos_token, eos_token (Tokenizer.special_token_texts()),
    tools, or a template's own switches.
    """
    if not isinstance(template, str) or not template:
        raise ChatTemplateError("chat template: missing (this model file has no tokenizer.chat_template)")
    _check_messages(messages)
    compiled = _compile(template)
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **special)
    except _TemplateRaised as error:
        raise ChatTemplateError(f"chat template refused the conversation: {error}") from None
    except jinja2.TemplateError as error:
        raise ChatTemplateError(f"chat template failed: {type(error).__name__}: {error}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
        raise ChatTemplateError(f"chat template failed: {type(error).__name__}: {error}") from None


def _check_messages(messages: Any) -> None:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"messages: expected a list of dicts, got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{index}]: expected a dict, got {type(message).__name__}")
        if not isinstance(message.get("role"), str):
            raise ChatTemplateError(f"messages[{index}]: needs a 'role' string")
