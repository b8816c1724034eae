"""OpenAI-shaped responses: completions, chat completions and their streamed chunks.

The shapes follow the OpenAI API (and llama.cpp's server): id, object, created, model, choices with a
finish_reason, usage; llama.cpp's `timings` ride along on the response and on the last chunk.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from mlspecqd.apps.generation import Generation, GenerationResult


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, result: GenerationResult) -> dict[str, int]:
    completion_tokens = len(result.tokens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ResponseShape:
    """Builds the dicts of one response: a completion ("text_completion") or a chat completion."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.model = model

    def _envelope(self, object_name: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "choices": [choice]}

    def response(self, result: GenerationResult, prompt_tokens: int) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                      "finish_reason": result.finish_reason}
        else:
            choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
        body = self._envelope("chat.completion" if self.chat else "text_completion", choice)
        body["usage"] = usage(prompt_tokens, result)
        body["timings"] = result.timings
        return body

    def _chunk(self, content: dict[str, Any] | str, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", choice)
        choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish_reason}
        return self._envelope("text_completion", choice)

    def chunks(self, generation: Generation, prompt_tokens: int) -> Iterator[dict[str, Any]]:
        """One chunk per streamed piece (a chat stream opens with the assistant role), then a last
        chunk with the finish_reason, usage and timings. Stopping early ends the generation cleanly."""
        pieces = iter(generation)
        try:
            if self.chat:
                yield self._chunk({"role": "assistant", "content": ""}, None)
            for piece in pieces:
                yield self._chunk({"content": piece} if self.chat else piece, None)
        finally:
            pieces.close()  # a consumer that stops early: the cascade's caches are synced here
        result = generation.result
        assert result is not None
        last = self._chunk({} if self.chat else "", result.finish_reason)
        last["usage"] = usage(prompt_tokens, result)
        last["timings"] = result.timings
        yield last


def response_from_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed response that a complete stream of chunks (from ResponseShape.chunks) stands
    for: the same id, text, finish_reason, usage and timings."""
    first, last = chunks[0], chunks[-1]
    chat = first["object"] == "chat.completion.chunk"
    if chat:
        text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": last["choices"][0]["finish_reason"]}
    else:
        text = "".join(chunk["choices"][0]["text"] for chunk in chunks)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": last["choices"][0]["finish_reason"]}
    return {"id": first["id"], "object": "chat.completion" if chat else "text_completion",
            "created": first["created"], "model": first["model"], "choices": [choice],
            "usage": last["usage"], "timings": last["timings"]}
