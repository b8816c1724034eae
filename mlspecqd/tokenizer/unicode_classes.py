"""Unicode character classes for Python's `re`, which lacks \\p{L} and \\p{N}.

The pre-tokenizer patterns of byte-level BPE models are written with \\p{L} (letters), \\p{N}
(numbers) and \\s. We spell those out as bracket-expression bodies built from `unicodedata`, so the
standard library's `re` can run the patterns without the third-party `regex` module.
"""

from __future__ import annotations

import functools
import sys
import unicodedata

# The Unicode White_Space property, which is what \s means in the Oniguruma and Rust engines that
# Hugging Face tokenizers use. Python's own \s also matches U+001C..U+001F, so we avoid it.
_WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _escape(code_point: int) -> str:
    return f"\\U{code_point:08x}"


def _ranges_body(ranges: list[tuple[int, int]]) -> str:
    return "".join(_escape(a) if a == b else f"{_escape(a)}-{_escape(b)}" for a, b in ranges)


@functools.cache
def _category_ranges() -> dict[str, list[tuple[int, int]]]:
    """Code point ranges whose general category starts with L (letters) or N (numbers)."""
    ranges: dict[str, list[tuple[int, int]]] = {"L": [], "N": []}
    current, start = None, 0
    for code_point in range(sys.maxunicode + 1):
        major = unicodedata.category(chr(code_point))[0]
        kind = major if major in ranges else None
        if kind != current:
            if current is not None:
                ranges[current].append((start, code_point - 1))
            current, start = kind, code_point
    if current is not None:
        ranges[current].append((start, sys.maxunicode))
    return ranges


@functools.cache
def letters() -> str:
    """Bracket-expression body for \\p{L}."""
    return _ranges_body(_category_ranges()["L"])


@functools.cache
def numbers() -> str:
    """Bracket-expression body for \\p{N}."""
    return _ranges_body(_category_ranges()["N"])


@functools.cache
def white_space() -> str:
    """Bracket-expression body for \\s (Unicode White_Space)."""
    return _ranges_body([(ord(c), ord(c)) for c in _WHITE_SPACE])


def expand(pattern: str) -> str:
    """Rewrite \\p{L}, \\p{N}, \\s and \\S into explicit classes.

    Only the forms the pre-tokenizer patterns use are handled: \\p{L} and \\p{N} inside a bracket
    expression or alone, \\s inside a bracket expression or alone, and \\S alone.
    """
    replacements = {
        r"\p{L}": letters(),
        r"\p{N}": numbers(),
        r"\s": white_space(),
    }
    out: list[str] = []
    in_brackets = False
    index = 0
    while index < len(pattern):
        if pattern.startswith(r"\S", index):
            if in_brackets:
                raise ValueError(r"\S inside a bracket expression is not supported")
            out.append(f"[^{white_space()}]")
            index += 2
            continue
        for escape, body in replacements.items():
            if pattern.startswith(escape, index):
                out.append(body if in_brackets else f"[{body}]")
                index += len(escape)
                break
        else:
            char = pattern[index]
            if char == "\\":
                out.append(pattern[index : index + 2])
                index += 2
                continue
            if char == "[" and not in_brackets:
                in_brackets = True
            elif char == "]" and in_brackets:
                in_brackets = False
            out.append(char)
            index += 1
    return "".join(out)
