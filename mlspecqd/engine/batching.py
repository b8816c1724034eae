"""Several sequences decoded together: each in a thread of its own, their forwards merged.

Each sequence runs its own generation (its own speculative cascade, unchanged) in its own thread, over
SequenceSlot views: one cache slot of each shared Model. A view's forward does not run at once; it waits
in the ForwardBatcher until every thread taking part is waiting too, and then the forwards asked of one
model run as one Model.forward_batch call, which reads the weights once for all of those sequences.
The cheapest model waited on goes first: drafts are cheap and each sequence drafts only so far before it
needs its verifier, so the sequences meet at the dearest model (the target) and verify together, in the
forward that matters most. Every sequence's output stays exactly what it is alone: forward_batch gives
each sequence the same logits bits as a solo forward.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mlspecqd.engine.model import Model


@dataclass(eq=False)
class _Forward:
    """One sequence's forward, waiting for its group to run."""

    model: Model
    slot: int
    tokens: np.ndarray
    start: int
    all_logits: bool
    logits: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    """What the batcher ran: native calls and the sequences they carried."""

    calls: int = 0
    sequences: int = 0
    sequences_by_call_size: dict[int, int] = field(default_factory=dict)

    def record(self, size: int) -> None:
        self.calls += 1
        self.sequences += size
        self.sequences_by_call_size[size] = self.sequences_by_call_size.get(size, 0) + 1


class ForwardBatcher:
    """Merges the forwards that member threads ask of the same models. A thread takes part between
    entering and leaving `member()`: a group runs only once every member waits on a forward, so a member
    must not wait on anything else meanwhile (the others would wait for it). A thread that is no member
    takes part for the length of each forward it asks."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._members = 0
        self._membership = threading.local()  # .depth: how many member() blocks this thread is inside
        self._waiting: list[_Forward] = []
        self._running = False
        self.stats = BatchStats()

    @contextlib.contextmanager
    def member(self) -> Iterator[None]:
        self._join()
        try:
            yield
        finally:
            self._leave()

    def forward(self, model: Model, slot: int, tokens: np.ndarray, start: int, all_logits: bool) -> np.ndarray:
        """Model.forward(tokens, start, all_logits, slot), run together with the other members' forwards."""
        model.check_forward(tokens, start, slot)  # a bad request fails in its own thread, not its group's
        request = _Forward(model, slot, np.asarray(tokens), start, all_logits)
        with self.member(), self._condition:
            self._waiting.append(request)
            while not request.done:
                if not self._running and len(self._waiting) == self._members:
                    self._run_one_group()
                else:
                    self._condition.wait()
        if request.error is not None:
            raise request.error
        assert request.logits is not None
        return request.logits

    def _join(self) -> None:
        self._membership.depth = getattr(self._membership, "depth", 0) + 1
        if self._membership.depth == 1:
            with self._condition:
                self._members += 1

    def _leave(self) -> None:
        self._membership.depth -= 1
        if self._membership.depth == 0:
            with self._condition:
                self._members -= 1
                self._condition.notify_all()  # the others may all be waiting now: one of them runs

    def _run_one_group(self) -> None:
        """Run the next group (called with the lock held; releases it while the forward runs)."""
        group = self._next_group()
        self._waiting = [request for request in self._waiting if request not in group]
        self._running = True
        self._condition.release()
        try:
            try:
                results = group[0].model.forward_batch(
                    [(request.slot, request.tokens, request.start, request.all_logits) for request in group])
                for request, logits in zip(group, results):
                    request.logits = logits
            except Exception as error:  # checked requests should not fail; if one does, its group learns why
                for request in group:
                    request.error = error
        finally:
            self._condition.acquire()
            self._running = False
            for request in group:
                request.done = True
            self.stats.record(len(group))
            self._condition.notify_all()

    def _next_group(self) -> list[_Forward]:
        """The waiting forwards of the model with the fewest weight bytes (the earliest asked on a tie).
        No forward waits forever: a sequence asks a cheaper model only a bounded number of times (a
        draft's length) before it waits on its verifier."""
        model = min(self._waiting, key=lambda request: request.model.weight_bytes).model
        return [request for request in self._waiting if request.model is model]


class SequenceSlot:
    """One cache slot of a shared Model, as a language model of its own (what a cascade level needs):
    its forwards go through `batcher`, so they run together with the other sequences'."""

    def __init__(self, model: Model, slot: int, batcher: ForwardBatcher) -> None:
        if slot >= model.slot_count:
            model.reserve_slots(slot + 1)
        self.model = model
        self.slot = slot
        self.batcher = batcher

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def context_length(self) -> int:
        return self.model.context_length

    @property
    def n_past(self) -> int:
        return self.model.slot_n_past(self.slot)

    def forward(self, tokens: Sequence[int] | np.ndarray, start: int, all_logits: bool = False) -> np.ndarray:
        return self.batcher.forward(self.model, self.slot, np.asarray(tokens), start, all_logits)

    def truncate(self, n: int) -> None:
        self.model.truncate(n, self.slot)
