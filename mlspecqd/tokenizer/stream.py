"""Streaming detokenization: text out as tokens arrive, never half a UTF-8 character."""

from __future__ import annotations

import codecs
from collections.abc import Callable

# piece(token_id, at_text_start) -> (the bytes the token adds, whether it is a text token)
PieceFunction = Callable[[int, bool], tuple[bytes, bool]]


class StreamDecoder:
    """Turns token ids into text one at a time.

    A token may end inside a multi-byte character (byte-fallback and byte-level tokens often do);
    those bytes are held back until the character is complete. Invalid bytes become U+FFFD, exactly
    as Tokenizer.decode renders them, so the concatenated output equals decode() of the same ids.
    """

    def __init__(self, piece: PieceFunction) -> None:
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_text_start = True

    def feed(self, token_id: int) -> str:
        """The text newly completed by this token (possibly empty)."""
        data, is_text = self._piece(token_id, self._at_text_start)
        if is_text:
            self._at_text_start = False
        return self._decoder.decode(data)

    def flush(self) -> str:
        """Whatever is held back (an incomplete character becomes U+FFFD); the decoder starts afresh."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._at_text_start = True
        return text
