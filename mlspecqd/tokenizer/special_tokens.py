"""Finding special tokens (chat markers like <|im_start|>) in text before ordinary encoding."""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Iterator

# Groups the prefix-tree regex may nest. The tree of real special tokens nests a few dozen deep at most
# (Gemma's runs of 1 to 31 spaces are the deepest); `re` compiles by recursion, so a deeper tree (token
# texts that each end inside the next, as a file may hold) goes to the automaton instead.
_MAX_NESTED_GROUPS = 64


class SpecialTokenSplitter:
    """Cuts text into plain-text parts and the ids of the special tokens written in it.

    Matching is leftmost, and longest at a position, as Hugging Face's added-token matcher does. The
    texts go into one regex shaped as their prefix tree, or, when that tree nests too deep for `re`,
    into an Aho-Corasick automaton; both take time linear in the text.
    """

    def __init__(self, ids_by_text: dict[str, int]) -> None:
        self._ids_by_text = ids_by_text
        texts = sorted(text for text in ids_by_text if text)
        self._pattern: re.Pattern[str] | None = None
        self._automaton: _LongestMatchAutomaton | None = None
        if texts:
            pattern = _trie_pattern(texts)
            if pattern is None:
                self._automaton = _LongestMatchAutomaton(texts)
            else:
                self._pattern = re.compile(pattern)

    def split(self, text: str) -> list[str | int]:
        if self._pattern is None and self._automaton is None:
            return [text] if text else []
        parts: list[str | int] = []
        start = 0
        for match_start, match_end in self._matches(text):
            if match_start > start:
                parts.append(text[start:match_start])
            parts.append(self._ids_by_text[text[match_start:match_end]])
            start = match_end
        if start < len(text):
            parts.append(text[start:])
        return parts

    def _matches(self, text: str) -> Iterator[tuple[int, int]]:
        if self._pattern is not None:
            return (match.span() for match in self._pattern.finditer(text))
        return self._automaton.matches(text)  # type: ignore[union-attr]


def _trie_pattern(texts: list[str]) -> str | None:
    """One regex for all texts (sorted, distinct, not empty), shaped as their prefix tree; None when the
    tree nests more than _MAX_NESTED_GROUPS groups.

    A flat alternation of thousands of literals (Gemma has over 6,000 special tokens) makes the
    engine try each at every candidate position; the tree tries one branch per character. Where a
    token ends inside a longer one, the rest is optional and greedy: the longest match wins.
    """
    try:
        return _subtree_pattern(texts, 0, 0)
    except _TooDeep:
        return None


class _TooDeep(Exception):
    pass


def _subtree_pattern(texts: list[str], depth: int, groups: int) -> str:
    """The regex matching the longest of `texts` (sorted, all sharing their first `depth` characters)
    from character `depth` on, inside `groups` nested groups. A chain of characters with one child each
    is written as one literal, so the recursion goes as deep as the groups nest, not as the texts run."""
    ends_here = len(texts[0]) == depth  # sorted: a text that ends here comes first
    longer = texts[1:] if ends_here else texts
    if not longer:
        return ""
    groups += ends_here
    if groups > _MAX_NESTED_GROUPS:
        raise _TooDeep
    # The characters all remaining texts share from here (those of the first and last, as they are sorted).
    shared = depth
    while shared < len(longer[0]) and longer[0][shared] == longer[-1][shared]:
        shared += 1
    if shared > depth:
        body = re.escape(longer[0][depth:shared]) + _subtree_pattern(longer, shared, groups)
    else:
        if groups + 1 > _MAX_NESTED_GROUPS:
            raise _TooDeep
        branches = [re.escape(char) + _subtree_pattern(list(group), depth + 1, groups + 1)
                    for char, group in itertools.groupby(longer, key=lambda text: text[depth])]
        body = "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if ends_here else body


class _LongestMatchAutomaton:
    """Leftmost-longest matching of many texts in time linear in the text searched (Aho-Corasick).

    The automaton holds the texts reversed: read from the end of the text to its start, the state after
    reading position i knows the longest text that starts at i. Taking, from the left, the longest
    text that starts at each position and jumping past it gives the leftmost-longest matches."""

    def __init__(self, texts: list[str]) -> None:
        children: list[dict[str, int]] = [{}]
        longest = [0]
        for text in texts:
            node = 0
            for char in reversed(text):
                child = children[node].get(char)
                if child is None:
                    child = len(children)
                    children[node][char] = child
                    children.append({})
                    longest.append(0)
                node = child
            longest[node] = len(text)
        failure = [0] * len(children)
        queue = collections.deque(children[0].values())
        while queue:
            node = queue.popleft()
            for char, child in children[node].items():
                fallback = failure[node]
                while fallback and char not in children[fallback]:
                    fallback = failure[fallback]
                failure[child] = children[fallback].get(char, 0) if fallback or node else 0
                longest[child] = max(longest[child], longest[failure[child]])
                queue.append(child)
        self._children = children
        self._failure = failure
        self._longest = longest

    def matches(self, text: str) -> Iterator[tuple[int, int]]:
        children, failure, longest = self._children, self._failure, self._longest
        starting_here = [0] * len(text)
        node = 0
        for position in range(len(text) - 1, -1, -1):
            char = text[position]
            while node and char not in children[node]:
                node = failure[node]
            node = children[node].get(char, 0)
            starting_here[position] = longest[node]
        position = 0
        while position < len(text):
            length = starting_here[position]
            if length:
                yield position, position + length
                position += length
            else:
                position += 1
