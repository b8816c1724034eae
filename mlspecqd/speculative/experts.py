"""What a forward of T rows reads on a Mixture-of-Experts model, learned from its router online.

A T-row forward reads the dense weights once and each distinct routed expert once (csrc/model/moe.cpp),
so at batch 1, where reading the weights bounds a forward, its time over one row's is about

    read_ratio(T) = 1 + expert_share * (D(T) / k - 1)

with k the experts a row uses, D(T) the distinct experts per layer that T consecutive rows use, and
expert_share the routed experts' part of the bytes one row reads (known from the weights). D(T) is
measured around each forward (Model.expert_rows() before and after) and averaged by forward size. A
size not measured yet is priced from the measured frequencies of the experts as if rows chose them
independently, E_p(T) = sum over experts of 1 - (1 - p_e)^T, with the excess over k scaled as at the
nearest measured size: consecutive rows share experts more than independent ones would, and that
ratio carries over between nearby sizes. Before anything is measured, D(T) is the uniform
E (1 - (1 - k / E)^T).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from mlspecqd.engine.mixed_experts import ExpertArrays, tensor_bytes
from mlspecqd.engine.quant import is_expert_weight


class ExpertSpec(Protocol):
    n_experts: int
    n_experts_used: int


class RoutedModel(Protocol):
    """What the cost model reads from a model with experts (mlspecqd.engine.model.Model satisfies it)."""

    spec: ExpertSpec
    tensors: Mapping[str, np.ndarray]

    def expert_rows(self) -> np.ndarray:
        """Rows routed to each expert so far, (n_layers, n_experts), cumulative."""


def routed_expert_share(tensors: Mapping[str, ExpertArrays], n_experts: int, n_experts_used: int) -> float:
    """The routed experts' share of the bytes one row's forward reads: k of the E experts of each stack,
    every other weight whole, except an embedding table with an LM head of its own (a row reads one
    embedding row). An expert stack in mixed precision (a list of arrays) counts its arrays' bytes, as if
    every expert were read equally often."""
    rows_only = {"token_embd.weight"} if "output.weight" in tensors else set()  # a row reads one embedding row
    expert_bytes = sum(tensor_bytes(tensor) for name, tensor in tensors.items() if is_expert_weight(name))
    other_bytes = sum(tensor_bytes(tensor) for name, tensor in tensors.items()
                      if not is_expert_weight(name) and name not in rows_only)
    read = expert_bytes * n_experts_used / n_experts
    return read / (read + other_bytes) if read + other_bytes else 0.0


class ExpertActivity:
    """Distinct experts per layer by forward size, and the read ratio they give (see the module docstring).

    `record(rows, routed)` takes a forward's size and the rows it routed to each expert of each layer
    (the difference of Model.expert_rows() around it). Each size keeps the mean of its last
    `window` forwards; expert frequencies count every routed row since construction."""

    def __init__(self, n_experts: int, n_experts_used: int, expert_share: float, window: int = 32) -> None:
        if not 0 < n_experts_used <= n_experts:
            raise ValueError(f"ExpertActivity: {n_experts_used} experts used of {n_experts}")
        self.n_experts = n_experts
        self.n_experts_used = n_experts_used
        self.expert_share = expert_share
        self.window = window
        self._distinct: dict[int, deque[float]] = {}
        self._routed: np.ndarray | None = None  # (n_layers, n_experts) rows routed, summed over forwards
        self._rows = 0
        self._cache: dict[int, float] = {}  # distinct(T), cleared by record
        self.version = 0  # counts the forwards recorded: estimates made before a record may have moved

    @classmethod
    def of(cls, model: object) -> ExpertActivity | None:
        """The activity tracker of a RoutedModel with experts; None for any other model."""
        spec = getattr(model, "spec", None)
        if getattr(spec, "n_experts", 0) <= 0 or not hasattr(model, "expert_rows"):
            return None
        share = routed_expert_share(model.tensors, spec.n_experts, spec.n_experts_used)
        return cls(spec.n_experts, spec.n_experts_used, share)

    def record(self, rows: int, routed: np.ndarray) -> None:
        if rows <= 0 or routed.size == 0:
            return
        routed = np.asarray(routed, dtype=np.int64)
        distinct = float(np.count_nonzero(routed, axis=1).mean())
        self._distinct.setdefault(rows, deque(maxlen=self.window)).append(distinct)
        self._routed = routed.copy() if self._routed is None else self._routed + routed
        self._rows += rows
        self._cache.clear()
        self.version += 1

    def measured_sizes(self) -> dict[int, float]:
        """Mean distinct experts per layer of the recent forwards, by forward size."""
        return {rows: float(np.mean(values)) for rows, values in self._distinct.items()}

    def distinct(self, rows: int) -> float:
        """Expected distinct experts per layer that a forward of `rows` consecutive rows uses."""
        if rows not in self._cache:
            self._cache[rows] = self._estimate(rows)
        return self._cache[rows]

    def read_ratio(self, rows: int) -> float:
        """Bytes a forward of `rows` rows reads over those one row reads."""
        return 1.0 + self.expert_share * (self.distinct(rows) / self.n_experts_used - 1.0)

    def independent(self, rows: int) -> float:
        """Distinct experts per layer if each row chose its experts independently with the measured
        frequencies (the uniform ones before any row is measured)."""
        E, k = self.n_experts, self.n_experts_used
        if self._routed is None:
            return E * (1.0 - (1.0 - k / E) ** rows)
        chance = np.minimum(self._routed / self._rows, 1.0)  # per layer and expert: the chance a row uses it
        return float((1.0 - (1.0 - chance) ** rows).sum(axis=1).mean())

    def _estimate(self, rows: int) -> float:
        k = self.n_experts_used
        measured = self.measured_sizes()
        if rows in measured:
            return measured[rows]
        estimate = self.independent(rows)
        beyond_one = [size for size in measured if size > 1 and self.independent(size) > k]
        if beyond_one and rows > 1:
            nearest = min(beyond_one, key=lambda size: (abs(size - rows), size))
            scale = (measured[nearest] - k) / (self.independent(nearest) - k)
            estimate = k + (estimate - k) * scale
        return min(max(estimate, float(k)), float(self.n_experts), float(k * rows))
