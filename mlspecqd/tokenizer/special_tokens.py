"""Finding special tokens (chat markers like <|im_start|>) in text before ordinary encoding."""

from __future__ import annotations

import re


class SpecialTokenSplitter:
    """Cuts text into plain-text parts and the ids of the special tokens written in it.

    Matching is leftmost, and longest at a position, as Hugging Face's added-token matcher does.
    """

    def __init__(self, ids_by_text: dict[str, int]) -> None:
        self._ids_by_text = ids_by_text
        texts = [text for text in ids_by_text if text]
        self._pattern = re.compile(_trie_pattern(texts)) if texts else None

    def split(self, text: str) -> list[str | int]:
        if self._pattern is None:
            return [text] if text else []
        parts: list[str | int] = []
        start = 0
        for match in self._pattern.finditer(text):
            if match.start() > start:
                parts.append(text[start : match.start()])
            parts.append(self._ids_by_text[match.group()])
            start = match.end()
        if start < len(text):
            parts.append(text[start:])
        return parts


def _trie_pattern(texts: list[str]) -> str:
    """One regex for all texts, shaped as their prefix tree.

    A flat alternation of thousands of literals (Gemma has over 6,000 special tokens) makes the
    engine try each at every candidate position; the tree tries one branch per character. Where a
    token ends inside a longer one, the rest is optional and greedy: the longest match wins.
    """
    trie: dict = {}
    for text in texts:
        node = trie
        for char in text:
            node = node.setdefault(char, {})
        node[""] = True  # a token ends here

    def pattern(node: dict) -> str:
        branches = [re.escape(char) + pattern(child) for char, child in node.items() if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            return f"(?:{body})?"
        return body

    return pattern(trie)
