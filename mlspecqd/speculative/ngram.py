"""Model-free drafting by prompt lookup: continue the sequence the way it continued last time.

The drafter finds the longest suffix of the sequence (n = max_n down to min_n tokens) that occurred
before, and proposes the tokens that followed its most recent earlier occurrence. Its proposals are
point masses (q = one_hot), which verification handles exactly. Confidence grows with the match length
and falls along the continuation: n / (n + 1 + j) for the j-th proposed token (0-based).
"""

from __future__ import annotations

import numpy as np

from mlspecqd.speculative.levels import Decoding, Level, Proposal
from mlspecqd.speculative.policies import DraftLengthPolicy, PolicyError, StoppingRule


class NgramDrafter(Level):
    """Prompt-lookup drafter; only valid as the bottom level of a cascade."""

    kind = "ngram"

    def __init__(self, max_n: int = 4, min_n: int = 1, name: str = "ngram",
                 policy: DraftLengthPolicy | None = None) -> None:
        if not 1 <= min_n <= max_n:
            raise PolicyError(f"n-gram sizes must satisfy 1 <= min_n <= max_n (got min_n={min_n}, max_n={max_n})")
        super().__init__(name, tokenizer=None, policy=policy)
        self.max_n = max_n
        self.min_n = min_n

    def find_continuation(self, sequence: list[int], count: int) -> tuple[list[int], int]:
        """(up to `count` tokens that followed the longest earlier match of a suffix, the match length);
        ([], 0) when no suffix of at least min_n tokens occurred before."""
        tokens = np.asarray(sequence, dtype=np.int64)
        last = tokens.shape[0] - 1
        # Earlier positions holding the last token end a match of length 1; keep those whose match still
        # extends one token further back, while any do: what is left ends the longest matches.
        ends = np.flatnonzero(tokens[:last] == tokens[last]) if last > 0 else np.empty(0, dtype=np.int64)
        length = 1
        while ends.size and length < self.max_n:
            longer = ends[(ends >= length) & (tokens[np.maximum(ends - length, 0)] == tokens[last - length])]
            if not longer.size:
                break
            ends, length = longer, length + 1
        if not ends.size or length < self.min_n:
            return [], 0
        follow = int(ends[-1]) + 1  # the most recent of the longest matches
        return [int(t) for t in tokens[follow : follow + count]], length

    def propose(self, sequence: list[int], count: int, decoding: Decoding, stopping: StoppingRule | None = None,
                confidences: bool = False) -> Proposal:
        started = self.clock()
        continuation, match_length = self.find_continuation(sequence, count)
        proposal = Proposal()
        for j, token in enumerate(continuation):
            confidence = match_length / (match_length + 1 + j)
            if stopping is not None and not stopping.keep(confidence):  # its drafts cost no time
                break
            proposal.append(token, None, None, confidence if stopping or confidences else None)
            if token in decoding.end_ids:
                break
        self.proposal_timing.record(len(proposal), self.clock() - started)
        return proposal
