"""Experts in mixed precision: the most used experts of an MoE model in BF16, the others in MXFP4.

An expert stack (blk.N.ffn_{gate,up,down}_exps.weight) is either one array (experts, N, K) of one type
or, mixed, a list of one (N, K) array per expert: uint16 BF16 bits or uint8 MXFP4 blocks (N, K / 32 *
17). A mixed stack's BF16 experts are views of one array of those experts only, its MXFP4 experts views
of another (or of the mapped file), so that no copy of the whole stack in BF16 stays alive.

Which experts are hot comes from measured router statistics: Model.expert_rows() over calibration
text, rows routed to each expert per layer. Every expert costs the same bytes in a model, so the
budget's worth of BF16 experts goes to the most used ones over all layers (`hot_expert_mask`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from mlspecqd.engine import quant, weight_layout
from mlspecqd.gguf import GGUFFile, ModelSpec

ExpertArrays = np.ndarray | list[np.ndarray]


class ExpertPrecisionError(ValueError):
    """A choice of BF16 experts that cannot work: a fraction outside [0, 1], a budget that does not hold
    the MXFP4 model, a profile of the wrong shape. The message names the value."""


def hot_expert_mask(expert_rows: np.ndarray, count: int) -> np.ndarray:
    """(n_layers, n_experts) bools: the `count` experts with the most routed rows over all layers, ties
    to the lower layer, then the lower expert number."""
    rows = np.asarray(expert_rows)
    if rows.ndim != 2 or rows.size == 0:
        raise ExpertPrecisionError(f"expert profile: expected router counts (n_layers, n_experts), got {rows.shape}")
    if not 0 <= count <= rows.size:
        raise ExpertPrecisionError(f"cannot choose {count} BF16 experts out of {rows.size}")
    order = np.lexsort((np.arange(rows.size), -rows.ravel().astype(np.float64)))
    mask = np.zeros(rows.size, dtype=bool)
    mask[order[:count]] = True
    return mask.reshape(rows.shape)


def expert_count_for_fraction(fraction: float, n_experts_in_all: int) -> int:
    """How many experts `fraction` of them is (rounded to the nearest, halves up); ExpertPrecisionError
    outside [0, 1]."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 <= fraction <= 1.0:
        raise ExpertPrecisionError(f"bf16_experts must be a fraction in [0, 1], got {fraction!r}")
    return int(np.floor(fraction * n_experts_in_all + 0.5))


def is_mixed(stack: ExpertArrays) -> bool:
    return isinstance(stack, list)


def arrays_of(tensor: ExpertArrays) -> list[np.ndarray]:
    """The arrays a tensor is made of: itself, or each expert's of a mixed stack."""
    return tensor if isinstance(tensor, list) else [tensor]


def tensor_bytes(tensor: ExpertArrays) -> int:
    return sum(array.nbytes for array in arrays_of(tensor))


def resident_bytes(tensor_dicts: Iterable[Mapping[str, ExpertArrays]]) -> int:
    """Bytes of distinct memory under the arrays of all the given models' tensors: an array two models
    share (a sibling's embedding, an MXFP4 expert of both target and draft) counts once."""
    spans: dict[int, int] = {}
    for tensors in tensor_dicts:
        for tensor in tensors.values():
            for array in arrays_of(tensor):
                address = array.__array_interface__["data"][0]
                spans[address] = max(spans.get(address, 0), array.nbytes)
    return sum(spans.values())


def mixed_stack(bf16_bits: np.ndarray, hot: np.ndarray, mxfp4_blocks: np.ndarray | None, name: str) -> ExpertArrays:
    """A stack (experts, N, K) of BF16 bits with the experts where `hot` in BF16 and the others in MXFP4:
    views of `mxfp4_blocks` (experts, N, K / 32 * 17) where given (blocks the file stores), else cast
    now. All hot or none hot gives one array, not a list."""
    hot = np.asarray(hot, dtype=bool)
    if hot.all():
        return bf16_bits
    if not hot.any():
        return mxfp4_blocks if mxfp4_blocks is not None else quant.cast_to_mxfp4(bf16_bits, name)
    hot_bits = _cache_aligned_copy(bf16_bits[hot])
    cold = np.flatnonzero(~hot)
    cold_blocks = mxfp4_blocks if mxfp4_blocks is not None else quant.cast_to_mxfp4(bf16_bits[cold], name)
    hot_index = np.cumsum(hot) - 1
    cold_index = np.cumsum(~hot) - 1
    return [hot_bits[hot_index[e]] if hot[e] else
            cold_blocks[e if mxfp4_blocks is not None else cold_index[e]] for e in range(len(hot))]


def mxfp4_experts(stack: ExpertArrays, name: str) -> ExpertArrays:
    """The stack with every expert in MXFP4: a mixed stack's MXFP4 experts are shared (the same arrays),
    its BF16 ones cast into one new array; a whole BF16 stack is cast, an MXFP4 one returned as it is."""
    if not isinstance(stack, list):
        return stack if stack.dtype == np.uint8 else quant.cast_to_mxfp4(stack, name)
    bf16 = [e for e, array in enumerate(stack) if array.dtype == np.uint16]
    if not bf16:
        return stack
    cast = quant.cast_to_mxfp4(np.stack([stack[e] for e in bf16]), name)
    position = {e: i for i, e in enumerate(bf16)}
    return [cast[position[e]] if e in position else array for e, array in enumerate(stack)]


def _cache_aligned_copy(array: np.ndarray) -> np.ndarray:
    copy = weight_layout.cache_aligned_empty(array.shape, array.dtype)
    copy[...] = array
    return copy


def checked_mask(bf16_experts: np.ndarray, spec: ModelSpec, where: str) -> np.ndarray:
    """`bf16_experts` as bools (n_layers, n_experts) for an MoE `spec`; ExpertPrecisionError otherwise."""
    mask = np.asarray(bf16_experts)
    if not spec.is_moe:
        raise ExpertPrecisionError(f"{where}: bf16_experts given, but the model has no experts")
    expected = (spec.n_layers, spec.n_experts)
    if mask.dtype != np.bool_ or mask.shape != expected:
        raise ExpertPrecisionError(f"{where}: bf16_experts must be bools of shape {expected}, got {mask.dtype} "
                                   f"{mask.shape}")
    return mask


def bf16_mask(spec: ModelSpec, tensors: Mapping[str, ExpertArrays]) -> np.ndarray:
    """Bools (n_layers, n_experts): which experts `tensors` hold in BF16, read off each gate stack."""
    if not spec.is_moe:
        return np.zeros((spec.n_layers, 0), dtype=bool)
    stacks = [tensors[f"blk.{layer}.ffn_gate_exps.weight"] for layer in range(spec.n_layers)]
    return np.array([[array.dtype == np.uint16 for array in per_expert(stack)] for stack in stacks])


def per_expert(stack: ExpertArrays) -> list[np.ndarray]:
    """One array per expert of a stack, mixed or not."""
    return stack if isinstance(stack, list) else list(stack)


@dataclass(frozen=True)
class ExpertBytes:
    """A model file's weight bytes split for the choice of BF16 experts: everything but the experts at
    the dense precision, and one expert (gate, up and down of one layer) in MXFP4 and in BF16."""

    dense: int
    expert_mxfp4: int
    expert_bf16: int
    shape: tuple[int, int]  # (n_layers, n_experts)

    @property
    def n_experts_in_all(self) -> int:
        return self.shape[0] * self.shape[1]

    def weights(self, bf16_count: int) -> int:
        """Bytes of the weights with `bf16_count` experts in BF16 and the rest in MXFP4."""
        extra = self.expert_bf16 - self.expert_mxfp4
        return self.dense + self.n_experts_in_all * self.expert_mxfp4 + bf16_count * extra


def expert_bytes(gguf_file: GGUFFile, precision: str) -> ExpertBytes:
    """ExpertBytes of an MoE file whose other linear weights are in `precision` ("bf16" or "mxfp4");
    vectors and the router are float32, the embedding BF16."""
    spec = gguf_file.spec
    dense = 0
    for name, info in gguf_file.tensors.items():
        if quant.is_expert_weight(name):
            continue
        if len(info.shape) < 2 or quant.is_router_weight(name):
            dense += 4 * info.n_elements
        elif precision == "mxfp4" and quant.is_linear_weight(name):
            dense += info.n_elements // quant.MXFP4_BLOCK_VALUES * quant.MXFP4_BLOCK_BYTES
        else:
            dense += 2 * info.n_elements
    elements = 3 * spec.expert_d_ff * spec.d_model
    return ExpertBytes(dense, elements // quant.MXFP4_BLOCK_VALUES * quant.MXFP4_BLOCK_BYTES, 2 * elements,
                       (spec.n_layers, spec.n_experts))


def bf16_count_within(sizes: ExpertBytes, weight_budget: float) -> int:
    """The most experts that can be BF16 with the weights in `weight_budget` bytes (0 where even the
    all-MXFP4 experts do not fit: they load anyway, as small as the model gets)."""
    spare = weight_budget - sizes.weights(0)
    if spare <= 0:
        return 0
    return min(sizes.n_experts_in_all, int(spare // (sizes.expert_bf16 - sizes.expert_mxfp4)))


def choose_bf16_experts(sizes: ExpertBytes, weight_budget: float | None, fraction: float | None,
                        expert_rows: np.ndarray | None) -> np.ndarray | None:
    """Which experts to hold in BF16: `fraction` of them (ExpertPrecisionError where that does not fit in
    `weight_budget` bytes of weights, if one is given), else as many as fit in `weight_budget`; the most
    used first by `expert_rows` (router counts, n_layers x n_experts). None: no mix, all or none in BF16
    as the budget says (Model.load's own rule). ExpertPrecisionError where a mix needs expert_rows and
    none are given."""
    if fraction is None and weight_budget is None:
        return None
    count = bf16_count_within(sizes, weight_budget) if weight_budget is not None else sizes.n_experts_in_all
    if fraction is not None:
        wanted = expert_count_for_fraction(fraction, sizes.n_experts_in_all)
        if wanted > count:
            raise ExpertPrecisionError(
                f"bf16_experts {fraction:g} ({wanted} experts in BF16) needs {sizes.weights(wanted):,} bytes of "
                f"weights, over the {int(weight_budget or 0):,} the memory budget leaves for them")
        count = wanted
    if expert_rows is None:
        if 0 < count < sizes.n_experts_in_all:
            raise ExpertPrecisionError(f"{count} of {sizes.n_experts_in_all} experts in BF16: choosing the hot ones "
                                       "needs router counts (an expert profile)")
        return np.full(sizes.shape, count > 0)
    if np.shape(expert_rows) != sizes.shape:
        raise ExpertPrecisionError(f"expert profile: router counts of shape {np.shape(expert_rows)}, but the model "
                                   f"has (n_layers, n_experts) = {sizes.shape}")
    return hot_expert_mask(expert_rows, count)
