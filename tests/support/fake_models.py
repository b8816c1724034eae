"""Small deterministic stand-ins for the native model and the tokenizer, with the same protocols.

FakeLanguageModel is an n-gram model: the logits at a position are a fixed random row chosen by the
last `order` tokens. Its "KV cache" is a list of (token, position, prefix hash) entries, and the logits
are computed from the cache entries, not from the arguments, so a cache left out of step with the text
(a missing truncate, a wrong start) changes the output and shows in tests.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlspecqd.engine.sampling import SamplingParams, greedy_token


class FakeClock:
    """A clock the fake models advance by their simulated cost, so timing policies are deterministic."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


_ROWS = 509  # rows of logits, picked by a hash of the last `order` tokens


def _context_row(tokens: Sequence[int]) -> int:
    value = 17
    for token in tokens:
        value = (value * 1_000_003 + int(token) + 1) % 2_147_483_647
    return value % _ROWS


class FakeLanguageModel:
    """vocab_size, n_past, context_length, forward(tokens, start, all_logits), truncate(n)."""

    def __init__(self, vocab_size: int = 64, context_length: int = 512, order: int = 2, seed: int = 0,
                 scale: float = 4.0, *, table: np.ndarray | None = None, eos_id: int | None = None,
                 eos_at: int | None = None, clock: FakeClock | None = None, call_seconds: float = 0.0,
                 token_seconds: float = 0.0) -> None:
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.order = order
        if table is None:
            table = np.random.default_rng(seed).standard_normal((_ROWS, vocab_size)) * scale
        self.table = np.asarray(table, dtype=np.float32)
        self.eos_id = eos_id
        self.eos_at = eos_at
        if eos_id is not None:
            self.table[:, eos_id] = self.table.min() - 1.0  # only ever chosen when forced by eos_at
        self.clock = clock
        self.call_seconds = call_seconds
        self.token_seconds = token_seconds
        self.cache: list[tuple[int, int, int]] = []
        self.forward_sizes: list[int] = []

    def like(self, **changes) -> FakeLanguageModel:
        """A model with the same table and settings, with some changed (e.g. a cheaper clone)."""
        settings = dict(vocab_size=self.vocab_size, context_length=self.context_length, order=self.order,
                        table=self.table, eos_id=self.eos_id, eos_at=self.eos_at, clock=self.clock,
                        call_seconds=self.call_seconds, token_seconds=self.token_seconds)
        settings.update(changes)
        return FakeLanguageModel(**settings)

    def noisy(self, noise: float, seed: int = 1, **changes) -> FakeLanguageModel:
        """A draft: the same table plus Gaussian noise, so it agrees with this model often, not always."""
        extra = np.random.default_rng(seed).standard_normal(self.table.shape) * noise
        return self.like(table=self.table + extra, **changes)

    def opposite(self, **changes) -> FakeLanguageModel:
        """A draft whose greedy choice is never this model's (it ranks the vocabulary upside down)."""
        return self.like(table=-self.table, **changes)

    @property
    def n_past(self) -> int:
        return len(self.cache)

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.n_past:
            raise ValueError(f"truncate({n}) with {self.n_past} cached")
        del self.cache[n:]

    def forward(self, tokens: Sequence[int], start: int, all_logits: bool) -> np.ndarray:
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("forward of no tokens")
        if not 0 <= start <= self.n_past:
            raise ValueError(f"start {start} beyond the {self.n_past} cached tokens")
        if start + len(tokens) > self.context_length:
            raise ValueError(f"context full: {start} + {len(tokens)} > {self.context_length}")
        if any(not 0 <= t < self.vocab_size for t in tokens):
            raise ValueError("token id out of range")
        if self.clock is not None:
            self.clock.advance(self.call_seconds + self.token_seconds * len(tokens))
        self.forward_sizes.append(len(tokens))
        del self.cache[start:]
        rows = []
        for token in tokens:
            previous_hash = self.cache[-1][2] if self.cache else 0
            self.cache.append((token, len(self.cache), (previous_hash * 1_000_003 + token + 1) % 2_147_483_647))
            rows.append(self._logits_from_cache())
        return np.stack(rows) if all_logits else rows[-1][None, :]

    def _logits_from_cache(self) -> np.ndarray:
        recent = [token for token, _, _ in self.cache[-self.order :]]
        return self._logits(recent, len(self.cache))

    def _logits(self, recent: Sequence[int], length: int) -> np.ndarray:
        logits = self.table[_context_row(recent)].copy()
        if self.eos_id is not None and self.eos_at is not None and length >= self.eos_at:
            logits[self.eos_id] = self.table.max() + 1.0
        return logits

    def logits_for(self, context: Sequence[int]) -> np.ndarray:
        """The logits after `context`, computed without any cache: the reference."""
        return self._logits(list(context[-self.order :]), len(context))

    def fresh_cache(self, tokens: Sequence[int]) -> list[tuple[int, int, int]]:
        """The cache a fresh model would hold after one forward of `tokens`."""
        fresh = self.like(clock=None)
        if tokens:
            fresh.forward(tokens, 0, all_logits=False)
        return fresh.cache


@dataclass(frozen=True)
class ExpertCounts:
    """The part of a ModelSpec the cost model reads from a model with experts."""

    n_experts: int
    n_experts_used: int


class FakeExpertModel(FakeLanguageModel):
    """A FakeLanguageModel with experts: each token id routes to `n_experts_used` of `n_experts` experts
    in each of `n_layers` layers (a fixed random table, skewed so that some experts are hot), counted as
    Model.expert_rows() counts them. A forward of T rows costs call_seconds + token_seconds * T plus
    `expert_seconds` for each distinct expert each layer reads, as reading weights bounds a CPU forward.
    `tensors` has the sizes that make the routed experts' share of a row's bytes that of its seconds."""

    def __init__(self, n_experts: int = 32, n_experts_used: int = 4, n_layers: int = 2, expert_seconds: float = 0.001,
                 routing_seed: int = 7, **settings) -> None:
        super().__init__(**settings)
        self.spec = ExpertCounts(n_experts, n_experts_used)
        self.expert_seconds = expert_seconds
        rng = np.random.default_rng(routing_seed)
        popularity = 1.0 / np.arange(1, n_experts + 1)  # Zipf: the first experts are hot
        self.routes = np.stack([[rng.choice(n_experts, n_experts_used, replace=False, p=popularity / popularity.sum())
                                 for _ in range(n_layers)] for _ in range(self.vocab_size)])  # (vocab, layers, k)
        self.routed = np.zeros((n_layers, n_experts), dtype=np.int64)
        microseconds = int(expert_seconds * 1e6)
        self.tensors = {"blk.0.ffn_up_exps.weight": np.zeros(n_layers * n_experts * microseconds, np.uint8),
                        "output.weight": np.zeros(int(self.call_seconds * 1e6), np.uint8)}

    def expert_rows(self) -> np.ndarray:
        return self.routed.copy()

    def forward(self, tokens: Sequence[int], start: int, all_logits: bool) -> np.ndarray:
        logits = super().forward(tokens, start, all_logits)
        chosen = self.routes[np.asarray(tokens, dtype=np.int64)]  # (T, layers, k)
        for layer in range(chosen.shape[1]):
            np.add.at(self.routed[layer], chosen[:, layer].ravel(), 1)
            if self.clock is not None:
                self.clock.advance(self.expert_seconds * np.unique(chosen[:, layer]).size)
        return logits


def reference_greedy(model: FakeLanguageModel, prompt: Sequence[int], max_new_tokens: int,
                     end_ids: Sequence[int] = (), params: SamplingParams | None = None) -> list[int]:
    """Plain greedy decoding from `logits_for`: no cache, no speculation; the sequence never exceeds the
    context length."""
    params = params or SamplingParams.greedy()
    sequence, generated = list(prompt), []
    while len(generated) < max_new_tokens and len(sequence) < model.context_length:
        recent = sequence[-params.repeat_last_n :] if params.repeat_last_n else []
        token = greedy_token(model.logits_for(sequence), params, recent)
        sequence.append(token)
        generated.append(token)
        if token in end_ids:
            break
    return generated


class _Utf8StreamDecoder:
    def __init__(self, tokenizer: ByteTokenizer) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._decoder.decode(self._tokenizer.token_bytes(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class ByteTokenizer:
    """Byte-level: token id = byte value; an optional end-of-generation id (shown as no text)."""

    def __init__(self, vocab_size: int = 256, eos_id: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.bos_id = None
        self.add_bos = False
        self.end_of_generation_ids = frozenset() if eos_id is None else frozenset({eos_id})

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == self.eos_id else bytes([token])

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return b"".join(self.token_bytes(t) for t in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> _Utf8StreamDecoder:
        return _Utf8StreamDecoder(self)

    def is_end_of_generation(self, token: int) -> bool:
        return token in self.end_of_generation_ids

    def same_vocabulary(self, other: ByteTokenizer) -> str | None:
        if (self.vocab_size, self.eos_id) == (other.vocab_size, other.eos_id):
            return None
        return f"vocab_size {self.vocab_size} vs {other.vocab_size}, eos {self.eos_id} vs {other.eos_id}"
