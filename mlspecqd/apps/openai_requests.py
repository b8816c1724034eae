"""OpenAI request bodies (`/v1/completions`, `/v1/chat/completions`) checked and turned into LLM calls.

The server and the batch runner read bodies the same way: the prompt or the messages, `max_tokens`
(or `max_completion_tokens`), `stop`, `stream`, and any field named as a sampling parameter
(mlspecqd.engine.sampling.SAMPLING_PARAMETER_NAMES). Other fields (`model`, `user`, ...) are the
caller's to check or ignore. Every refusal is a RequestError naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlspecqd.apps.llm import LLM
from mlspecqd.engine.sampling import SAMPLING_PARAMETER_NAMES

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
URLS = (CHAT_URL, COMPLETIONS_URL)
COMPLETION_DEFAULT_MAX_TOKENS = 128  # OpenAI's completions default is 16; llama.cpp's server runs on


class RequestError(ValueError):
    """A request body that cannot run; `param` names the field (None: the body as a whole)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class CompletionRequest:
    """One checked request: chat (messages) or completion (prompt), and how to run it."""

    chat: bool
    prompt: str | list[dict[str, Any]]
    max_tokens: int | None
    stop: str | list[str] | None = None
    stream: bool = False
    sampling_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, url: str, body: Any) -> CompletionRequest:
        if url not in URLS:
            raise RequestError(f"url must be one of {', '.join(URLS)} (got {url!r})")
        if not isinstance(body, dict):
            raise RequestError(f"the body must be a JSON object (got {type(body).__name__})")
        chat = url == CHAT_URL
        if chat:
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                raise RequestError("messages: a non-empty list of messages is required for "
                                   f"{CHAT_URL}", "messages")
            prompt = body["messages"]
        else:
            if not isinstance(body.get("prompt"), str):
                raise RequestError(f"prompt: a string is required for {COMPLETIONS_URL}", "prompt")
            prompt = body["prompt"]
        if body.get("n", 1) != 1:
            raise RequestError(f"n: only 1 choice per request is supported (got {body['n']!r})", "n")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(f"stream must be true or false (got {stream!r})", "stream")
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = body.get(name)
        if max_tokens is None and not chat:
            max_tokens = COMPLETION_DEFAULT_MAX_TOKENS
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
            raise RequestError(f"{name} must be a whole number (got {max_tokens!r})", name)
        options = {key: body[key] for key in SAMPLING_PARAMETER_NAMES if body.get(key) is not None}
        return cls(chat, prompt, max_tokens, body.get("stop"), stream, options)

    def run(self, llm: LLM) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """The response (an iterator of chunks when streamed). Arguments the LLM refuses raise
        ValueError subclasses before any token is generated."""
        method = llm.create_chat_completion if self.chat else llm.create_completion
        return method(self.prompt, self.max_tokens, stop=self.stop, stream=self.stream, **self.sampling_options)
