"""Model-free drafting by prompt lookup: continue the sequence the way it continued last time.

The drafter finds the longest suffix of the sequence (n = max_n down to min_n tokens) that occurred
before, and proposes the tokens that followed its most recent earlier occurrence. Its proposals are
point masses (q = one_hot), which verification handles exactly. Confidence grows with the match length
and falls along the continuation: n / (n + 1 + j) for the j-th proposed token (0-based).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mlspecqd.speculative.levels import Decoding, Level, Proposal
from mlspecqd.speculative.policies import DraftLengthPolicy, PolicyError


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
        length = tokens.shape[0]
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            # Windows that end before the last token, so each has at least one token after it.
            windows = sliding_window_view(tokens[: length - 1], n)
            matches = np.flatnonzero((windows == tokens[length - n :]).all(axis=1))
            if matches.size:
                follow = int(matches[-1]) + n
                return [int(t) for t in tokens[follow : follow + count]], n
        return [], 0

    def propose(self, sequence: list[int], count: int, decoding: Decoding) -> Proposal:
        started = self.clock()
        continuation, match_length = self.find_continuation(sequence, count)
        threshold = None if self.policy is None else self.policy.confidence_threshold
        proposal = Proposal()
        for j, token in enumerate(continuation):
            if threshold is not None and match_length / (match_length + 1 + j) < threshold:
                break
            proposal.append(token, None, None)
            if token in decoding.end_ids:
                break
        self.proposal_timing.record(len(proposal), self.clock() - started)
        return proposal
