"""Finding special tokens (chat markers like <|im_start|>) in text before ordinary encoding."""

from __future__ import annotations

import re


class SpecialTokenSplitter:
    """Cuts text into plain-text parts and the ids of the special tokens written in it.

    Matching is leftmost, and longest at a position, as Hugging Face's added-token matcher does.
    """

    def __init__(self, ids_by_text: dict[str, int]) -> None:
        self._ids_by_text = ids_by_text
        texts = sorted((text for text in ids_by_text if text), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, texts))) if texts else None

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
