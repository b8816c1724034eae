"""ChatSession: a conversation that keeps its messages and reuses the cached keys/values of its past.

    session = ChatSession(llm, system="You are terse.", max_tokens=256)
    for piece in session.send("What is a monad?"):
        print(piece, end="", flush=True)
    session.last_result.timings["predicted_per_second"]

Each turn's prompt is the whole conversation through the chat template. The cascade's levels reuse
the longest token prefix their caches share with it, so only the new turn is processed, provided the
conversation's tokens do not change: the model's own answer is kept as the very tokens it generated
(re-tokenizing its text could split it differently and force a recompute from there).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mlspecqd.apps.generation import GenerationResult
from mlspecqd.apps.llm import LLM
from mlspecqd.engine.sampling import SamplingParams


class ChatSession:
    """Messages so far plus the tokens the model last saw; options are those of LLM.start()."""

    def __init__(self, llm: LLM, system: str | None = None, max_tokens: int | None = None,
                 sampling: SamplingParams | None = None, stop: list[str] | None = None) -> None:
        self.llm = llm
        self.system = system
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stop = stop
        self.messages: list[dict[str, Any]] = []
        self.last_result: GenerationResult | None = None
        self._seen_tokens: list[int] = []  # prompt + answer of the last finished turn
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays). Cached keys/values are kept: a next
        conversation with the same system prompt still reuses them."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.last_result = None
        self._seen_tokens = []

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        """Tokens of the conversation ready for the answer: the tokens of the last turn as they were,
        then the new text, when the rendered conversation still starts with that turn's text."""
        text = self.llm.chat_prompt(messages)
        if self._seen_tokens:
            seen_text = self.llm.tokenizer.decode(self._seen_tokens)
            if text.startswith(seen_text):
                rest = text[len(seen_text):]
                return self._seen_tokens + self.llm.tokenizer.encode(rest, add_special=False, parse_special=True)
        return self.llm.prompt_text_tokens(text)

    def send(self, text: str) -> Iterator[str]:
        """Stream the answer to a user message. The message and the answer (as far as it got, when the
        consumer stops early or an interrupt arrives) join the conversation. A prompt that does not fit
        the context raises GenerationError here, leaving the conversation as it was."""
        messages = [*self.messages, {"role": "user", "content": text}]
        tokens = self.prompt_tokens(messages)
        generation = self.llm.start(tokens, self.max_tokens, self.sampling, self.stop)
        return self._stream(messages, tokens, generation)

    def _stream(self, messages: list[dict[str, Any]], tokens: list[int], generation: Any) -> Iterator[str]:
        pieces: list[str] = []
        stream = iter(generation)
        try:
            for piece in stream:
                pieces.append(piece)
                yield piece
        finally:
            stream.close()
            result = generation.result
            self.messages = [*messages, {"role": "assistant", "content": "".join(pieces)}]
            self.last_result = result
            self._seen_tokens = tokens + result.tokens if result is not None else []
