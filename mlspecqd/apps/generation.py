"""Text generation with a model or a speculative cascade: prompt processing, the decode loop, streamed
text, stop rules and llama.cpp-shaped timings.

    generation = generate(cascade, tokenizer, prompt_tokens, max_new_tokens=128, stop=["\\n\\n"])
    for piece in generation:          # text as it is decided, stop strings never shown
        print(piece, end="", flush=True)
    result = generation.result        # tokens, text, finish_reason, timings

Tokens are handled one by one after each round, exactly as plain decoding would see them, so a stop
string or end-of-generation token inside an accepted chunk ends the output at the same place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from mlspecqd.engine.sampling import NonFiniteLogitsError, Sampler, SamplingParams
from mlspecqd.speculative import Cascade, Decoding, LanguageModel

MAX_NEW_TOKENS_LIMIT = 2**31 - 1


class GenerationError(ValueError):
    """A generation request that cannot run: the message names the argument."""


class StreamDecoder(Protocol):
    def feed(self, token: int) -> str: ...

    def flush(self) -> str: ...


class GenerationTokenizer(Protocol):
    """What generation needs from mlspecqd.tokenizer.Tokenizer."""

    vocab_size: int
    end_of_generation_ids: frozenset[int]

    def stream_decoder(self) -> StreamDecoder: ...

    def is_end_of_generation(self, token: int) -> bool: ...


@dataclass(frozen=True)
class GenerationResult:
    tokens: list[int]    # generated ids; an end-of-generation token that ended the output is the last one
    text: str            # the streamed text: no end-of-generation token, nothing from a stop string on
    finish_reason: str   # "stop" (end-of-generation token or stop string) or "length" (max_new_tokens, context)
    timings: dict


class StopStringMatcher:
    """Passes text through, holding back any tail that could still grow into a stop string."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        self.stop_strings = tuple(stop_strings)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that is safe to show, whether a stop string completed: nothing after it is shown)."""
        if not self.stop_strings:
            return text, False
        self._held += text
        found = [index for index in (self._held.find(stop) for stop in self.stop_strings) if index >= 0]
        if found:
            shown, self._held = self._held[: min(found)], ""
            return shown, True
        keep = max(self._partial_match(stop) for stop in self.stop_strings)
        shown, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return shown, False

    def _partial_match(self, stop: str) -> int:
        """Length of the longest tail of the held text that is a proper prefix of `stop`."""
        for length in range(min(len(stop) - 1, len(self._held)), 0, -1):
            if self._held.endswith(stop[:length]):
                return length
        return 0

    def finish(self) -> str:
        """The held tail, once no more text will come."""
        shown, self._held = self._held, ""
        return shown


def _check_count(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GenerationError(f"{name} must be an integer (got {value!r})")
    if not low <= value <= high:
        raise GenerationError(f"{name} must be in [{low}, {high}] (got {value})")
    return value


class Generation:
    """One generation request, validated when created; iterate for text pieces, then read `result`."""

    def __init__(self, model_or_cascade: Cascade | LanguageModel, tokenizer: GenerationTokenizer,
                 prompt_tokens: Sequence[int], max_new_tokens: int | None = 256,
                 sampling: SamplingParams | None = None, stop: str | Sequence[str] = (), *,
                 prompt_chunk: int | None = None) -> None:
        self.cascade = model_or_cascade if isinstance(model_or_cascade, Cascade) else Cascade([model_or_cascade])
        self.tokenizer = tokenizer
        if tokenizer.vocab_size > self.cascade.vocab_size:
            raise GenerationError(f"tokenizer: {tokenizer.vocab_size} tokens, but the model has only "
                                  f"{self.cascade.vocab_size} logits per position")
        self.prompt = self._check_prompt(prompt_tokens)
        context = self.cascade.context_length
        self.max_new_tokens = context if max_new_tokens is None else \
            _check_count("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS_LIMIT)
        if sampling is not None and not isinstance(sampling, SamplingParams):
            raise GenerationError(f"sampling must be a SamplingParams or None (got {type(sampling).__name__})")
        self.sampling = sampling if sampling is not None else SamplingParams.greedy()
        self.stop = [stop] if isinstance(stop, str) else list(stop)
        for index, text in enumerate(self.stop):
            if not isinstance(text, str) or not text:
                raise GenerationError(f"stop[{index}] must be a non-empty string (got {text!r})")
        self.prompt_chunk = None if prompt_chunk is None else \
            _check_count("prompt_chunk", prompt_chunk, 1, MAX_NEW_TOKENS_LIMIT)
        self.result: GenerationResult | None = None
        self._started = False

    def _check_prompt(self, prompt_tokens: Sequence[int]) -> list[int]:
        prompt = list(prompt_tokens)
        if not prompt:
            raise GenerationError("prompt_tokens is empty: give at least one token (e.g. the BOS token)")
        for index, token in enumerate(prompt):
            if isinstance(token, bool) or not hasattr(token, "__index__") or not 0 <= token < self.cascade.vocab_size:
                raise GenerationError(f"prompt_tokens[{index}] = {token!r} is not a token id in "
                                      f"[0, {self.cascade.vocab_size})")
        context = self.cascade.context_length
        if len(prompt) >= context:
            raise GenerationError(f"prompt_tokens: {len(prompt)} tokens leave no room to generate in a context "
                                  f"of {context}")
        return [int(token) for token in prompt]

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise GenerationError("this generation has already run; call generate() again")
        self._started = True
        cascade, clock = self.cascade, self.cascade.clock
        started = clock()
        cascade.reset_stats()
        cached = cascade.prefill(self.prompt, self.prompt_chunk)
        prompt_done = clock()
        end_ids = frozenset(self.tokenizer.end_of_generation_ids)
        decoding = Decoding(Sampler(self.sampling), end_ids)
        sequence = list(self.prompt)
        generated: list[int] = []
        pieces: list[str] = []
        decoder = self.tokenizer.stream_decoder()
        matcher = StopStringMatcher(self.stop)
        finish_reason = None
        stopped_by_string = False
        paused = 0.0  # time the consumer held the stream: not generation time

        def emit(piece: str) -> Iterator[str]:
            nonlocal paused
            pieces.append(piece)
            handed_over = clock()
            yield piece
            paused += clock() - handed_over

        try:
            while finish_reason is None:
                budget = min(self.max_new_tokens - len(generated), cascade.context_length - len(sequence))
                if budget <= 0:
                    finish_reason = "length"
                    break
                try:
                    emitted = cascade.step(sequence, budget, decoding).tokens
                except NonFiniteLogitsError as error:
                    raise GenerationError(f"token {len(generated) + 1} of the answer: {error}") from None
                for token in emitted:
                    sequence.append(token)
                    generated.append(token)
                    if token in end_ids:
                        finish_reason = "stop"
                        break
                    piece, stopped_by_string = matcher.feed(decoder.feed(token))
                    if piece:
                        yield from emit(piece)
                    if stopped_by_string:
                        finish_reason = "stop"
                        break
            if not stopped_by_string:
                piece, _ = matcher.feed(decoder.flush())
                for tail in (piece, matcher.finish()):
                    if tail:
                        yield from emit(tail)
        finally:
            cascade.sync(sequence)
        finished = clock() - paused
        self.result = GenerationResult(generated, "".join(pieces), finish_reason,
                                       self._timings(len(self.prompt) - cached, cached, prompt_done - started,
                                                     len(generated), finished - prompt_done, finished - started))

    def _timings(self, prompt_n: int, cache_n: int, prompt_seconds: float, predicted_n: int,
                 predicted_seconds: float, wall_seconds: float) -> dict:
        levels = self.cascade.stats(wall_seconds)
        first_draft = levels[-2] if len(levels) > 1 else {"draft_n": 0, "draft_n_accepted": 0}
        return {
            "cache_n": cache_n,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_seconds * 1e3,
            "prompt_per_token_ms": prompt_seconds * 1e3 / prompt_n if prompt_n else None,
            "prompt_per_second": prompt_n / prompt_seconds if prompt_seconds > 0 else None,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_seconds * 1e3,
            "predicted_per_token_ms": predicted_seconds * 1e3 / predicted_n if predicted_n else None,
            "predicted_per_second": predicted_n / predicted_seconds if predicted_seconds > 0 else None,
            # llama.cpp reports its one draft; here that is the level right below the target.
            "draft_n": first_draft["draft_n"],
            "draft_n_accepted": first_draft["draft_n_accepted"],
            "levels": levels,
        }

    def run(self) -> GenerationResult:
        """Generate to the end without streaming; returns the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


def generate(model_or_cascade: Cascade | LanguageModel, tokenizer: GenerationTokenizer,
             prompt_tokens: Sequence[int], max_new_tokens: int | None = 256, sampling: SamplingParams | None = None,
             stop: str | Sequence[str] = (), *, prompt_chunk: int | None = None) -> Generation:
    """Generate up to `max_new_tokens` (None: until the context is full) after `prompt_tokens`.

    `sampling` None is greedy decoding. `prompt_chunk` tokens per prompt forward (default: the
    cascade's, 256). Timings use the cascade's clock. Bad arguments raise GenerationError (a ValueError)
    here, before any work.
    """
    return Generation(model_or_cascade, tokenizer, prompt_tokens, max_new_tokens, sampling, stop,
                      prompt_chunk=prompt_chunk)
