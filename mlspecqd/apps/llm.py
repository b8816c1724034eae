"""LLM: a loaded model (with its speculative drafts) and its tokenizer, ready for everyday use.

    with mlspecqd.load() as llm:
        print(llm.generate("def fib(n):", max_tokens=64).text)
        for piece in llm.generate("def fib(n):", stream=True):
            print(piece, end="", flush=True)
        reply = llm.create_chat_completion([{"role": "user", "content": "Hi"}])
        print(reply["choices"][0]["message"]["content"], reply["timings"]["predicted_per_second"])

Sampling defaults are greedy (temperature 0): greedy output is exactly the target's own greedy output,
whatever the drafts. With temperature > 0, top_k / top_p / min_p default to llama.cpp's 40 / 0.95 / 0.05.
Every method takes a SamplingParams as `sampling=` and any of its fields by name (temperature=0.7, seed=1).
One LLM runs one generation at a time; a stream should be finished (or closed) before the next call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mlspecqd.apps.chat_template import ChatTemplateError, render_chat
from mlspecqd.apps.generation import Generation, GenerationError, GenerationResult, generate
from mlspecqd.apps.openai_format import ResponseShape
from mlspecqd.engine.batching import ForwardBatcher
from mlspecqd.engine.sampling import SamplingParams
from mlspecqd.speculative import Cascade
from mlspecqd.tokenizer import Tokenizer


class LLM:
    """A speculative cascade (target last) and the target's tokenizer. Build one with mlspecqd.load().

    `models` are the native models the LLM owns and frees on close() (or at the end of a `with`).
    Loaded with parallel=N, it has N lanes (`lanes`, itself first): LLMs over the same models, each with
    its own cascade and key/value cache slots, whose forwards `batcher` merges when they run at once
    (each lane in a thread of its own; see generate_many and mlspecqd.engine.batching).
    """

    def __init__(self, cascade: Cascade, tokenizer: Tokenizer, model_name: str, models: Sequence[Any] = (),
                 lane_cascades: Sequence[Cascade] = (), batcher: ForwardBatcher | None = None) -> None:
        self.cascade = cascade
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.batcher = batcher
        self._models = list(models)
        self._closed = False
        self._owner = self  # the lane that owns the models: closing it closes every lane
        self.lanes: list[LLM] = [self]
        for lane_cascade in lane_cascades:
            lane = LLM(lane_cascade, tokenizer, model_name, batcher=batcher)
            lane._owner = self
            self.lanes.append(lane)

    @property
    def models(self) -> tuple[Any, ...]:
        """The native models the LLM owns, the target first, then its model drafts smallest first."""
        return tuple(self._owner._models)

    def __repr__(self) -> str:
        levels = " -> ".join(str(level.name) for level in self.cascade.levels)
        return f"LLM({self.model_name!r}, levels: {levels}, context {self.context_length})"

    @property
    def context_length(self) -> int:
        """Tokens the context holds: prompt plus generated text."""
        return self.cascade.context_length

    @property
    def level_names(self) -> list[str]:
        """The cascade's levels, smallest draft first, the target last."""
        return [str(level.name) for level in self.cascade.levels]

    # Text and tokens

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for `text` (add_special: the BOS token where the model wants one)."""
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text the model's chat template makes of `messages`, ready for the answer."""
        if self.tokenizer.chat_template is None:
            raise ChatTemplateError(f"model {self.model_name}: its GGUF has no tokenizer.chat_template, so it "
                                    "cannot chat; use generate() / create_completion() with plain text")
        return render_chat(self.tokenizer.chat_template, [_plain_message(m, i) for i, m in enumerate(messages)],
                           add_generation_prompt=True, **self.tokenizer.special_token_texts())

    def chat_prompt_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of chat_prompt(messages), special-token texts parsed as those tokens."""
        return self.prompt_text_tokens(self.chat_prompt(messages))

    def prompt_text_tokens(self, text: str) -> list[int]:
        """Tokens of a rendered chat prompt: BOS added only where the template did not write it."""
        bos = self.tokenizer.special_token_texts().get("bos_token")
        add_bos = not (bos and text.startswith(bos))
        return self.tokenizer.encode(text, add_special=add_bos, parse_special=True)

    # Generation

    def start(self, prompt: str | Sequence[int], max_tokens: int | None = 128, sampling: SamplingParams | None = None,
              stop: str | Sequence[str] | None = None) -> Generation:
        """A validated generation, not yet run: iterate it for text pieces, then read `.result`.
        `prompt` is text (tokenized with BOS as the model wants) or token ids. max_tokens None: until the
        context is full. sampling None: greedy."""
        if self._owner._closed:
            raise GenerationError(f"this LLM ({self.model_name}) is closed")
        if isinstance(prompt, str):
            if not prompt:
                raise GenerationError("prompt is empty: give some text to continue")
            tokens = self.tokenize(prompt)
        else:
            tokens = list(prompt)
        if stop is not None and not isinstance(stop, str) and not (
                isinstance(stop, (list, tuple)) and all(isinstance(text, str) for text in stop)):
            raise GenerationError(f"stop must be a string or a list of strings (got {stop!r})")
        if len(tokens) >= self.context_length:
            raise GenerationError(f"prompt: {len(tokens)} tokens, but the context holds {self.context_length} "
                                  "(prompt and answer together): shorten it or raise the context length (ctx)")
        return generate(self.cascade, self.tokenizer, tokens, max_tokens, sampling, () if stop is None else stop)

    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = 128, *,
                 sampling: SamplingParams | None = None, stop: str | Sequence[str] | None = None,
                 stream: bool = False, **sampling_options: Any) -> GenerationResult | Generation:
        """Continue `prompt` (text or token ids) by up to `max_tokens` tokens.

        Sampling: `sampling` (default greedy), with any of its fields given by name as well
        (temperature=0.7, top_k=..., top_p, min_p, repeat_penalty, repeat_last_n, seed).
        Returns a GenerationResult (text, tokens, finish_reason "stop" or "length", timings with
        per-level speculation stats), or with stream=True the Generation: iterate it for the text
        as it is decided; its `.result` is set when the iteration ends. Stop strings end the text
        before them. Bad arguments raise ValueError subclasses before any work.
        """
        generation = self.start(prompt, max_tokens, _sampling(sampling, sampling_options), stop)
        return generation if stream else generation.run()

    def create_completion(self, prompt: str, max_tokens: int | None = 128, *, sampling: SamplingParams | None = None,
                          stop: str | Sequence[str] | None = None, stream: bool = False,
                          **sampling_options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """An OpenAI completion ("text_completion") dict for `prompt`, with usage and llama.cpp
        timings; with stream=True an iterator of chunks whose texts concatenate to the same text (the
        last chunk carries finish_reason, usage and timings). Sampling as in generate()."""
        if not isinstance(prompt, str):
            raise GenerationError(f"prompt must be a string (got {type(prompt).__name__})")
        tokens = self.tokenize(prompt) if prompt else []
        if not tokens:
            raise GenerationError("prompt is empty: give some text to continue")
        return self._respond(ResponseShape(False, self.model_name), tokens, max_tokens, stop, stream,
                             _sampling(sampling, sampling_options))

    def create_chat_completion(self, messages: list[dict[str, Any]], max_tokens: int | None = None, *,
                               sampling: SamplingParams | None = None, stop: str | Sequence[str] | None = None,
                               stream: bool = False,
                               **sampling_options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """An OpenAI chat completion for `messages` ([{"role", "content"}, ...]) through the model's
        chat template; max_tokens None runs to the end of the turn (or of the context). With
        stream=True an iterator of "chat.completion.chunk" dicts in the delta shape. Sampling as in
        generate()."""
        tokens = self.chat_prompt_tokens(messages)
        return self._respond(ResponseShape(True, self.model_name), tokens, max_tokens, stop, stream,
                             _sampling(sampling, sampling_options))

    def _respond(self, shape: ResponseShape, tokens: list[int], max_tokens: int | None,
                 stop: str | Sequence[str] | None, stream: bool,
                 sampling: SamplingParams) -> dict[str, Any] | Iterator[dict[str, Any]]:
        generation = self.start(tokens, max_tokens, sampling, stop)
        if stream:
            return shape.chunks(generation, len(tokens))
        return shape.response(generation.run(), len(tokens))

    def generate_many(self, prompts: Sequence[str | Sequence[int]], max_tokens: int | None = 128, *,
                      sampling: SamplingParams | None = None, stop: str | Sequence[str] | None = None,
                      **sampling_options: Any) -> list[GenerationResult]:
        """generate() for every prompt, up to len(lanes) at a time, their forwards merged; the results in
        the order of `prompts`. Each result is exactly what generate() gives for that prompt alone (greedy,
        or sampled with a seed). The first error stops every lane before its next prompt and is raised."""
        params = _sampling(sampling, sampling_options)
        results: list[GenerationResult | None] = [None] * len(prompts)

        def run_one(lane: LLM, index: int) -> None:
            results[index] = lane.start(prompts[index], max_tokens, params, stop).run()

        for_each_on_lanes(self.lanes, len(prompts), run_one)
        return [result for result in results if result is not None]  # every one is set, or an error was raised

    # Lifetime

    def close(self) -> None:
        """Free the native models (weights and key/value caches); later calls raise GenerationError."""
        for model in self._owner._models:
            model.close()
        self._owner._models = []
        self._owner._closed = True

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _sampling(sampling: SamplingParams | None, options: dict[str, Any]) -> SamplingParams:
    """`sampling` (greedy by default) with the fields named in `options` replaced."""
    return (sampling or SamplingParams.greedy()).replace(**options)


def _plain_message(message: Any, index: int) -> Any:
    """A message whose content is OpenAI's list of parts becomes one with the joined text parts
    (chat templates expect a string); anything else is left for the template's own checks."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    texts = []
    for part in message["content"]:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ChatTemplateError(f"messages[{index}].content: only text parts ({{'type': 'text', 'text': ...}}) "
                                    f"are supported, got {part!r}")
        texts.append(part["text"])
    return {**message, "content": "".join(texts)}


def for_each_on_lanes(lanes: Sequence[LLM], count: int, run_one: Callable[[LLM, int], None]) -> None:
    """run_one(lane, index) for index 0 .. count - 1, handed out in order to as many lanes at once as
    there are, each lane in a thread of its own that is a member of the lanes' batcher meanwhile. The
    first exception stops every lane before its next index and is raised once all have stopped."""
    claim = threading.Lock()
    indices = iter(range(count))
    failures: list[BaseException] = []

    def work(lane: LLM) -> None:
        with lane.batcher.member() if lane.batcher is not None else contextlib.nullcontext():
            while True:
                with claim:
                    index = None if failures else next(indices, None)
                if index is None:
                    return
                try:
                    run_one(lane, index)
                except BaseException as error:
                    with claim:
                        failures.append(error)

    threads = [threading.Thread(target=work, args=(lane,), name=f"mlspecqd-lane-{number}", daemon=True)
               for number, lane in enumerate(lanes[: max(1, min(len(lanes), count))])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
