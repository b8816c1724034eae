"""Chat prompts: render the GGUF's tokenizer.chat_template (Jinja, as Hugging Face templates are).

Templates come from model files, so they are untrusted code. They run in Jinja's immutable sandbox (they
can read what they are given and nothing else), and within budgets, so that no template can hang the
process or fill its memory, whatever it does:

- work: every loop iteration, call, filter, arithmetic or string operator and output piece is a step,
  MAX_STEPS per render; and the render stops after MAX_SECONDS (a backstop for steps that are slow);
- size: no string, list or output built by the template exceeds MAX_CHARS (lists count their items'
  sizes, as printing them would), operations that multiply sizes (`*`, `%`, str.format, replace,
  expandtabs, indent, tojson's indent, ...) are checked before they run, and whole numbers stay under
  MAX_INT_BITS bits; the template itself is at most MAX_TEMPLATE_CHARS;
- recursion: a macro that recurses too deeply, like any other failure of the template, is a
  ChatTemplateError.

One Jinja expression can still join the values it names (`a ~ a ~ a`, `[a, a, a]`) before a check sees the
result, so the memory a render takes is bounded by the template's length times MAX_CHARS.

The environment offers what Hugging Face's apply_chat_template does: raise_exception, strftime_now, a
tojson that keeps non-ASCII text, loop controls and the {% generation %} block.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import string
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.nodes
import jinja2.visitor
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mlspecqd.gguf.format import one_line

MAX_TEMPLATE_CHARS = 1 << 18  # real chat templates are a few KB; tool-calling ones up to some tens of KB
MAX_STEPS = 5_000_000
MAX_SECONDS = 10.0
MAX_CHARS = 1 << 24  # longest string, list (counted deep) or output; a prompt is far shorter
MAX_INT_BITS = 1 << 12
# The largest whole number a built-in method or filter may take as an argument (a width, a count, a
# length): the sandbox's own bound on range().
MAX_INT_ARGUMENT = 100_000
MAX_TOJSON_INDENT = 16
_MESSAGE_CHARS = 500  # the most of a template's own text (its raise_exception message) an error quotes


class ChatTemplateError(ValueError):
    """A chat template that does not parse, fails while rendering, exceeds a budget, or rejects the
    messages. The message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, 2 * _MESSAGE_CHARS))


class _TemplateRaised(Exception):
    """raise_exception() called by the template itself."""


class _BudgetExceeded(Exception):
    """A template went past one of the module's budgets; the message says which."""


class _Budget:
    """What one render (or compilation) may still spend."""

    def __init__(self) -> None:
        self.steps_left = MAX_STEPS
        self.deadline = time.monotonic() + MAX_SECONDS
        self.output_left = MAX_CHARS

    def step(self, count: int = 1) -> None:
        self.steps_left -= count
        if self.steps_left < 0:
            raise _BudgetExceeded(f"more than {MAX_STEPS} steps (loop iterations, calls, operators)")
        if time.monotonic() > self.deadline:
            raise _BudgetExceeded(f"rendering took more than {MAX_SECONDS:g} seconds")


_active = threading.local()  # .budget: the _Budget of the render running in this thread


def _budget() -> _Budget:
    """The running render's budget; outside render_chat (Jinja folding constants), a fresh one."""
    budget = getattr(_active, "budget", None)
    return _Budget() if budget is None else budget


def _size(value: Any) -> int:
    """The characters `value` takes as text, counting every item of a list, tuple or dict (a shared
    item once per reference, as printing it would), or 1 for any other value; stops past MAX_CHARS."""
    limit = MAX_CHARS
    total = 0
    pending = [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, (str, bytes)):
            total += len(item) + 1
            continue
        if isinstance(item, dict):
            total += len(item) + 1
            if total <= limit:
                pending.extend(item.keys())
                pending.extend(item.values())
            continue
        if not isinstance(item, (list, tuple, set, frozenset)):
            total += 1
            continue
        total += len(item) + 1
        if total > limit:
            break
        # Strings, the usual items, are summed in one pass; other items wait their turn.
        texts = [element for element in item if isinstance(element, (str, bytes))]
        total += sum(map(len, texts))
        if len(texts) < len(item):
            pending.extend(element for element in item if not isinstance(element, (str, bytes)))
    return total


def _check_value(value: Any, what: str) -> Any:
    """`value` when within the size budgets; a _BudgetExceeded naming `what` made it otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            raise _BudgetExceeded(f"{what} made a number of more than {MAX_INT_BITS} bits")
    elif _size(value) > MAX_CHARS:
        raise _BudgetExceeded(f"{what} made a value of more than {MAX_CHARS} characters")
    return value


def _check_estimate(estimate: int, what: str) -> None:
    if estimate > MAX_CHARS:
        raise _BudgetExceeded(f"{what} would make a value of about {estimate} characters (limit {MAX_CHARS})")


def _check_int_arguments(args: Iterable[Any], what: str) -> None:
    for argument in args:
        if isinstance(argument, int) and not isinstance(argument, bool) and abs(argument) > MAX_INT_ARGUMENT:
            raise _BudgetExceeded(f"{what}: argument {argument} is above {MAX_INT_ARGUMENT}")


def _largest(values: Iterable[Any]) -> int:
    return max((_size(value) for value in values), default=0)


# printf-style conversions: %[(key)][flags][width][.precision][length]type
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?(.)", re.DOTALL)


def _percent_estimate(fmt: str | bytes, arguments: Any) -> int:
    """An upper bound on the length of `fmt % arguments` (a _BudgetExceeded for `*` widths)."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    if isinstance(arguments, Mapping):
        largest = _largest(arguments.values())
    else:
        largest = _largest(arguments if isinstance(arguments, tuple) else (arguments,))
    estimate = len(text)
    for match in _PERCENT_SPEC.finditer(text):
        width, precision, _ = match.groups()
        if width == "*" or precision == "*":
            raise _BudgetExceeded("'%' formatting with a '*' width is not allowed in chat templates")
        widths = [int(number) for number in (width, precision) if number]
        _check_int_arguments(widths, "'%' formatting width")
        estimate += largest + sum(widths) + 32
    return estimate


def _format_estimate(fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on the length of fmt.format(*args, **kwargs)."""
    largest = _largest([*args, *kwargs.values()])
    estimate = len(fmt)
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None:
            continue
        if spec and "{" in spec:
            raise _BudgetExceeded("str.format with nested replacement fields is not allowed in chat templates")
        widths = [int(number) for number in re.findall(r"\d+", spec or "")]
        _check_int_arguments(widths, "str.format width")
        estimate += largest + sum(widths) + 32
    return estimate


def _check_string_method(method: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Size checks for the methods of str and bytes that can make a result much longer than their inputs."""
    text, name = method.__self__, method.__name__
    what = f"{type(text).__name__}.{name}"
    if name == "expandtabs":
        tab_size = kwargs.get("tabsize", args[0] if args else 8)
        if isinstance(tab_size, int):
            _check_estimate(len(text) + text.count(b"\t" if isinstance(text, bytes) else "\t") * tab_size, what)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], type(text)) and isinstance(args[1], type(text)):
        old, new = args[0], args[1]
        count = text.count(old) if old else len(text) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        _check_estimate(len(text) + count * max(len(new) - len(old), 0), what)
    elif name == "join" and args:
        _check_estimate(_size(args[0]) * (len(text) + 1), what)
    elif name == "translate" and args:
        table = args[0]
        longest = _largest(table.values()) if isinstance(table, Mapping) else 1
        _check_estimate(len(text) * max(longest, 1), what)
    elif name in ("format", "format_map") and isinstance(text, str):
        if name == "format_map":
            _check_estimate(_format_estimate(text, (), args[0] if args and isinstance(args[0], Mapping) else {}), what)
        else:
            _check_estimate(_format_estimate(text, args, kwargs), what)


class _LoopAndConcatGuard(jinja2.visitor.NodeTransformer):
    """Rewrites a parsed template so that every for-loop iterates through the step counter and every
    `~` concatenation goes through the size check (both as filters the environment defines)."""

    def visit_For(self, node: jinja2.nodes.For) -> jinja2.nodes.Node:
        node = self.generic_visit(node)
        node.iter = jinja2.nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: jinja2.nodes.Concat) -> jinja2.nodes.Node:
        node = self.generic_visit(node)
        return jinja2.nodes.Filter(jinja2.nodes.List(node.nodes, lineno=node.lineno), _CONCAT_FILTER, [], [],
                                   None, None, lineno=node.lineno)


class _GuardedCodeGenerator(jinja2.compiler.CodeGenerator):
    def visit_Template(self, node: jinja2.nodes.Template, frame: Any = None) -> None:
        super().visit_Template(_LoopAndConcatGuard().visit(node), frame)


_LOOP_FILTER = "mlspecqd_counted_loop"
_CONCAT_FILTER = "mlspecqd_checked_concat"


def _counted_loop(iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.step()
        yield item


def _checked_concat(values: list[Any]) -> str:
    budget = _budget()
    budget.step(len(values))
    _check_estimate(sum(len(value) if isinstance(value, str) else _size(value) for value in values), "'~'")
    return "".join(map(str, values))


def _checked_output(value: Any) -> Any:
    """Every {{ expression }} passes here on its way to the output (Jinja's finalize hook)."""
    budget = _budget()
    budget.step()
    size = len(value) if isinstance(value, str) else _size(value)
    budget.output_left -= size
    if budget.output_left < 0:
        raise _BudgetExceeded(f"the template wrote more than {MAX_CHARS} characters")
    return value


def _checked_join(pieces: Iterable[str]) -> str:
    """Jinja's concat (what a render, a macro or a {% set %} block joins its output with), checked."""
    budget = _budget()
    collected, total = [], 0
    for piece in pieces:
        budget.step()
        total += len(piece)
        if total > MAX_CHARS:
            raise _BudgetExceeded(f"the template wrote more than {MAX_CHARS} characters")
        collected.append(piece)
    return "".join(collected)


# Filters that read their first argument as a value, not as text: the others print it, so it is checked
# as text first.
_NON_TEXT_FILTERS = frozenset({
    "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float", "groupby", "int", "items",
    "last", "length", "list", "map", "max", "min", "reject", "rejectattr", "reverse", "round", "select",
    "selectattr", "slice", "sort", "sum", "unique", _LOOP_FILTER, _CONCAT_FILTER,
})


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (a Jinja filter) counted as a step, its numeric arguments bounded, its input checked
    when it will print it, and its result checked."""
    skip = 0 if getattr(function, "jinja_pass_arg", None) is None else 1  # the context Jinja passes first
    check_numbers = name not in _NON_TEXT_FILTERS or name in ("batch", "slice")

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _budget().step()
        what = f"filter {name}"
        values = args[skip:]
        if check_numbers:
            _check_int_arguments([*values[1:], *kwargs.values()], what)
        if values and name not in _NON_TEXT_FILTERS and not isinstance(values[0], str):
            _check_value(values[0], what)
        if name == "indent" and values:
            width = kwargs.get("width", values[1] if len(values) > 1 else 4)
            text = str(values[0])
            _check_estimate(len(text) + (text.count("\n") + 1) * (len(width) if isinstance(width, str) else width),
                            what)
        elif name == "replace" and len(values) >= 3:
            text, old, new = str(values[0]), str(values[1]), str(values[2])
            _check_estimate(len(text) + (text.count(old) if old else len(text) + 1) * len(new), what)
        elif name == "format" and values:
            _check_estimate(_percent_estimate(str(values[0]), kwargs or tuple(values[1:])), what)
        elif name == "join" and values:
            separator = kwargs.get("d", values[1] if len(values) > 1 else "")
            _check_estimate(_size(values[0]) * (len(str(separator)) + 1), what)
        return _check_value(function(*args, **kwargs), what)

    return guarded


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the module's budgets on every call, operator, loop and output."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    # The double underscores are Jinja's: a template may pass keyword arguments named self, context or obj.
    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().step()
        builtin = isinstance(__obj, (types.BuiltinFunctionType, types.BuiltinMethodType, types.MethodWrapperType))
        # The sandbox hands str.format out wrapped; the wrapper keeps the bound method as __wrapped__.
        method = getattr(__obj, "__wrapped__", __obj)
        what = getattr(method, "__qualname__", None) or type(__obj).__name__
        if builtin or method is not __obj:
            _check_int_arguments([*args, *kwargs.values()], what)
            if isinstance(getattr(method, "__self__", None), (str, bytes)):
                _check_string_method(method, args, kwargs)
        return _check_value(super().call(__context, __obj, *args, **kwargs), what)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _budget().step()
        if operator == "+" and type(left) is str and type(right) is str:  # the usual case: text joined
            _check_estimate(len(left) + len(right), "'+'")
            return left + right
        what = f"'{operator}'"
        numbers = isinstance(left, (int, float)) and isinstance(right, (int, float))
        result_checked = False  # whether the check below bounds the result exactly (no need to measure it)
        if operator == "*" and not numbers:
            count, sequence = (right, left) if isinstance(right, int) else (left, right)
            if isinstance(count, int):
                _check_estimate(_size(sequence) * max(count, 0), what)
                result_checked = True
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if abs(left) > 1 and abs(left).bit_length() * right > MAX_INT_BITS:
                raise _BudgetExceeded(f"'**' would make a number of more than {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, (str, bytes)):
            _check_estimate(_percent_estimate(left, right), what)
        elif operator == "+" and not numbers:
            _check_estimate(_size(left) + _size(right), what)
            result_checked = True
        result = super().call_binop(context, operator, left, right)
        return result if result_checked else _check_value(result, what)


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
    if not isinstance(format, str) or len(format) > 256:
        raise ValueError("strftime_now takes a format string of at most 256 characters")
    return datetime.datetime.now().strftime(format)


def _json_estimate(value: Any, indent: int | None, separator_chars: int, ensure_ascii: bool) -> int:
    """An upper bound on the length of json.dumps(value, ...): every character of a string may become an
    escape (\\uXXXX, twice for a character beyond the BMP), every item takes its separators and, with
    `indent`, a new line indented by its depth. Stops past MAX_CHARS."""
    per_char = 12 if ensure_ascii else 6
    total = 0
    pending = [(value, 1)]
    while pending and total <= MAX_CHARS:
        item, depth = pending.pop()
        total += 2 + separator_chars + (1 + (indent or 0) * depth if indent is not None else 0)
        if isinstance(item, str):
            total += per_char * len(item)
        elif isinstance(item, (list, tuple)):
            pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            pending.extend((child, depth + 1) for pair in item.items() for child in pair)
        else:
            total += 32  # a number, a boolean, null (json.dumps refuses other types)
    return total


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat prompts need the plain JSON.
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= MAX_TOJSON_INDENT):
        raise ValueError(f"tojson: indent must be a whole number from 0 to {MAX_TOJSON_INDENT}, got {indent!r}")
    separator_chars = _size(separators) if separators is not None else 2
    _check_estimate(_json_estimate(value, indent, separator_chars, bool(ensure_ascii)), "tojson")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.cache
def _environment() -> _GuardedEnvironment:
    # No constant folding (optimized=False): it tries to fold every subexpression of every expression, which
    # takes seconds for a few hundred chained attribute lookups, and a chat template has few constants to fold.
    environment = _GuardedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationBlock],
        finalize=_checked_output, optimized=False,
    )
    environment.concat = _checked_join  # type: ignore[method-assign]
    del environment.globals["lipsum"]  # writes as many paragraphs as asked: no chat template uses it
    environment.filters["tojson"] = _tojson
    environment.filters = {name: _guarded_filter(name, function) for name, function in environment.filters.items()}
    environment.filters[_LOOP_FILTER] = _counted_loop
    environment.filters[_CONCAT_FILTER] = _checked_concat
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(f"chat template line {error.lineno}: syntax error: {error.message}") from None
    except _BudgetExceeded as error:
        raise ChatTemplateError(f"chat template: {error}") from None
    except Exception as error:  # a template is code from a file: whatever compiling it raises is its fault
        raise ChatTemplateError(f"chat template does not compile: {type(error).__name__}: {error}") from None


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
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"chat template: {len(template)} characters, more than {MAX_TEMPLATE_CHARS}")
    _check_messages(messages)
    _active.budget = _Budget()
    try:
        compiled = _compile(template)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **special)
    except _TemplateRaised as error:
        raise ChatTemplateError(f"chat template refused the conversation: {error}") from None
    except _BudgetExceeded as error:
        raise ChatTemplateError(f"chat template: {error}") from None
    except ChatTemplateError:
        raise
    except Exception as error:  # a template is code from a file: whatever it raises is its failure
        raise ChatTemplateError(f"chat template failed: {type(error).__name__}: {error}") from None
    finally:
        _active.budget = None


def _check_messages(messages: Any) -> None:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"messages: expected a list of dicts, got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{index}]: expected a dict, got {type(message).__name__}")
        if not isinstance(message.get("role"), str):
            raise ChatTemplateError(f"messages[{index}]: needs a 'role' string")
