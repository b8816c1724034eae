"""A language model ready to run: native weights plus key/value caches, one per sequence slot.

`Model.forward(tokens, start)` runs all T tokens through every layer in one native call (the GIL is
released meanwhile) and returns float32 logits. Activations are float32; linear weights are BF16 (or
MXFP4 for precision="mxfp4"); each cache holds float32 keys and values for `context_length` positions.
`forward_batch` runs several sequences, each in its own slot, in one call that reads the weights once.
The logits of a position are the same bits whether it is computed alone, in a verification batch, in a
prompt chunk or beside other sequences, which is what lets speculative decoding be lossless."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from mlspecqd import _native
from mlspecqd.engine import mixed_experts, quant, weight_layout
from mlspecqd.engine.kernel_choice import KernelPlan
from mlspecqd.engine.mixed_experts import ExpertArrays
from mlspecqd.gguf import GGUFFile, ModelSpec, TensorInfo, expected_tensor_shapes, open_gguf

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "qwen2moe", "qwen3moe")
PRECISIONS = ("bf16", "mxfp4")


class Model:
    """A transformer (llama, qwen2, qwen3, gemma3; with experts qwen2moe, qwen3moe and Mixtral-style llama)
    with its key/value caches; see the module docstring."""

    def __init__(self, spec: ModelSpec, tensors: Mapping[str, ExpertArrays], precision: str,
                 context_length: int) -> None:
        self.spec = spec
        self.precision = precision
        # What the native model points into; shared by sibling precisions. An expert stack in mixed
        # precision is a list of one array per expert (mlspecqd.engine.mixed_experts).
        self.tensors = dict(tensors)
        # Bytes of the arrays it reads (shared ones included): what one forward reads at least.
        self.weight_bytes = sum(mixed_experts.tensor_bytes(tensor) for tensor in self.tensors.values())
        self._model: Any = _native.Model(native_config(spec), self.tensors, context_length)
        self.kernel_plan = KernelPlan()

    def set_kernel_plan(self, plan: KernelPlan) -> None:
        """The kernels this model's products run on, by their rows (mlspecqd.engine.kernel_choice). A plan
        with one choice for every row class keeps the model's outputs independent of how many rows a
        forward runs; only drafts may take others."""
        self._native_model.set_kernel_plan(plan.native())
        self.kernel_plan = plan

    def sibling(self, precision: str = "mxfp4", mxfp4_head: bool = True, context_length: int | None = None,
                cast_experts: bool = True) -> Model:
        """The same checkpoint at another precision: the ML-SpecQD self-draft. Only the linear weights
        are cast; the embedding, norms, biases and weights already in MXFP4 (experts of a mixed stack
        included, one by one) are this model's arrays, not copies. cast_experts=False: the experts stay
        this model's arrays whatever their precision (only the dense linear weights are cast)."""
        return Model.from_arrays(self.spec, self.tensors, precision,
                                 self.context_length if context_length is None else context_length, mxfp4_head,
                                 cast_experts)

    @classmethod
    def from_arrays(cls, spec: ModelSpec, tensors: Mapping[str, np.ndarray], precision: str = "bf16",
                    context_length: int = 4096, mxfp4_head: bool = True, cast_experts: bool = True) -> Model:
        """A model over `tensors` (by GGUF name): matrices are BF16 bit patterns (uint16), row-major (N, K)
        or, for linear weights, in column blocks (K / B, N, B) (mlspecqd.engine.weight_layout); experts
        (blk.N.ffn_*_exps) are (experts, N, K) BF16 bits; the MoE router (blk.N.ffn_gate_inp) and 1-D
        arrays are float32. The arrays are used in place and should start on a 64-byte cache line, so that no 64-byte
        load touches two lines (weight_layout.cache_aligned_empty; Model.load's do). For precision="mxfp4"
        the linear weights are cast (the expert stacks only where cast_experts) and every other array
        (embedding, norms, biases) is shared with `tensors`."""
        check_supported(spec, precision)
        if precision == "mxfp4":
            spec, tensors = _cast_to_mxfp4(spec, tensors, mxfp4_head, cast_experts)
        return cls(spec, tensors, precision, _capped_context(spec, context_length))

    @classmethod
    def load(cls, path_or_file: str | Path | GGUFFile, precision: str = "bf16", context_length: int = 4096,
             mxfp4_head: bool = True, memory_budget: int | None = None,
             bf16_experts: np.ndarray | None = None) -> Model:
        """Read a GGUF checkpoint, upcasting every matrix to BF16 (and to MXFP4 for precision="mxfp4"); the
        MoE router stays float32. At precision "mxfp4", linear weights the file stores as MXFP4 (as MoE
        files ship their experts) are used as stored, views of the mapped file. `context_length` is capped
        at the model's trained context. The other weights are converted copies; a file opened here is closed
        again before returning (its mapping lives as long as an array uses it). BF16 linear weights with a
        long K are stored in column blocks (mlspecqd.engine.weight_layout).

        An MoE model whose BF16 copy would not fit in `memory_budget` bytes (default: available_memory())
        keeps its experts in MXFP4 at precision "bf16" too (see experts_fit_in_bf16): stored MXFP4 experts
        as they are, others cast one expert stack at a time; every other weight is BF16 as usual. Dense
        models load the same whatever the budget.

        bf16_experts: for an MoE model, bools (n_layers, n_experts) saying which experts to hold in BF16
        (all three matrices), the others in MXFP4, whatever the budget (mixed_experts.choose_bf16_experts
        picks them); `precision` then applies to every other linear weight."""
        opened_here = not isinstance(path_or_file, GGUFFile)
        gguf_file = open_gguf(path_or_file) if opened_here else path_or_file
        try:
            spec = gguf_file.spec
            check_supported(spec, precision, where=str(gguf_file.path))
            shapes = expected_tensor_shapes(spec)
            experts_chosen = bf16_experts is not None
            if bf16_experts is None:
                budget = available_memory() if memory_budget is None else memory_budget
                all_bf16 = precision == "bf16" and experts_fit_in_bf16(gguf_file, budget)
                bf16_experts = np.full((spec.n_layers, spec.n_experts), all_bf16)
            else:
                bf16_experts = mixed_experts.checked_mask(bf16_experts, spec, str(gguf_file.path))
            tensors = {name: _loaded(gguf_file, name, precision, shapes.get(name), bf16_experts)
                       for name in gguf_file.tensors}
        finally:
            if opened_here:
                gguf_file.close()
        if precision == "mxfp4":
            spec, tensors = _cast_to_mxfp4(spec, tensors, mxfp4_head, cast_experts=not experts_chosen)
        return cls(spec, tensors, precision, _capped_context(spec, context_length))

    @property
    def _native_model(self) -> Any:
        if self._model is None:
            raise ValueError("the model is closed")
        return self._model

    @property
    def vocab_size(self) -> int:
        return self._native_model.vocab_size

    @property
    def context_length(self) -> int:
        return self._native_model.max_context

    @property
    def n_past(self) -> int:
        """Positions cached in slot 0 (the slot forward() uses unless told otherwise)."""
        return self._native_model.n_past()

    def slot_n_past(self, slot: int) -> int:
        return self._native_model.n_past(int(slot))

    @property
    def slot_count(self) -> int:
        """Sequences this model holds key/value caches for (1 until reserve_slots asks for more)."""
        return self._native_model.slot_count

    def bf16_experts(self) -> np.ndarray:
        """Bools (n_layers, n_experts): which experts this model holds in BF16 (by their gate matrix;
        gate, up and down of an expert share a type when loaded); (n_layers, 0) without experts."""
        return mixed_experts.bf16_mask(self.spec, self.tensors)

    def expert_rows(self) -> np.ndarray:
        """With experts: the rows routed to each expert since loading or reset_expert_rows(), an int64
        array (n_layers, n_experts), a row counted once for each expert it uses; (n_layers, 0) without.
        The router statistics behind speculation's cost model and the choice of hot experts."""
        return self._native_model.expert_rows()

    def reset_expert_rows(self) -> None:
        self._native_model.reset_expert_rows()

    def reserve_slots(self, count: int) -> None:
        """Make slots 0 .. count - 1 exist, each with its own key/value cache of context_length positions."""
        self._native_model.reserve_slots(int(count))

    def forward(self, tokens: Sequence[int] | np.ndarray, start: int, all_logits: bool = False,
                slot: int = 0) -> np.ndarray:
        """Truncate slot `slot`'s cache to `start` (<= its n_past), append `tokens`, and return float32
        logits: (len(tokens), vocab) if all_logits, else (1, vocab) for the last token."""
        return self._native_model.forward(_token_ids(tokens, "forward"), int(start), bool(all_logits), int(slot))

    def check_forward(self, tokens: Sequence[int] | np.ndarray, start: int, slot: int = 0) -> None:
        """Raise ValueError where forward(tokens, start, slot=slot) would, without running anything."""
        self._native_model.check_forward(_token_ids(tokens, "forward"), int(start), int(slot))

    def forward_batch(self, segments: Sequence[tuple[int, Sequence[int] | np.ndarray, int, bool]]) -> list[np.ndarray]:
        """One forward for several sequences, each (slot, tokens, start, all_logits) in a slot of its own:
        the weights are read once for all of them, and each sequence's logits are the same bits as from
        forward() alone. Returns each sequence's logits, in order."""
        native = [(int(slot), _token_ids(tokens, "forward_batch"), int(start), bool(all_logits))
                  for slot, tokens, start, all_logits in segments]
        logits = self._native_model.forward_batch(native)
        rows = np.cumsum([len(tokens) if all_logits else 1 for _, tokens, _, all_logits in native])[:-1]
        return np.split(logits, rows)

    def truncate(self, n: int, slot: int = 0) -> None:
        """Forget positions n .. n_past - 1 of slot `slot`."""
        self._native_model.truncate(int(n), int(slot))

    def close(self) -> None:
        """Free the key/value caches and this model's hold on the weights; later calls raise ValueError."""
        self._model = None
        self.tensors = {}

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _token_ids(tokens: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(tokens)
    if ids.size == 0:
        ids = ids.astype(np.int64)  # an empty list comes as float64; the native call names the problem
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{what}: tokens must be integers, got dtype {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def check_supported(spec: ModelSpec, precision: str, where: str = "model") -> None:
    if spec.architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{where}: architecture '{spec.architecture}' is not supported by the decoder "
                         f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    if precision not in PRECISIONS:
        raise ValueError(f"{where}: precision '{precision}' is not one of {', '.join(PRECISIONS)}")


def native_config(spec: ModelSpec) -> dict[str, Any]:
    """The hyper-parameters _native.Model reads, from a ModelSpec (the RopeScaling becomes a dict)."""
    return dataclasses.asdict(spec)


# Share of the memory budget a BF16 copy of the weights may take: the rest is for the key/value caches,
# activations, the tokenizer and the interpreter.
BF16_WEIGHTS_SHARE_OF_MEMORY = 0.8


def available_memory() -> int:
    """Bytes this process can take without swapping: MemAvailable in /proc/meminfo (free pages plus the
    cache the kernel can reclaim), or the free physical pages where there is no /proc/meminfo."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def bf16_weight_bytes(gguf_file: GGUFFile) -> int:
    """Bytes of the file's weights as a BF16 model holds them: 2 per element of a matrix or expert stack,
    4 per element of a vector or MoE router (float32)."""
    return sum(info.n_elements * (2 if len(info.shape) >= 2 and not quant.is_router_weight(name) else 4)
               for name, info in gguf_file.tensors.items())


def experts_fit_in_bf16(gguf_file: GGUFFile, memory_budget: int) -> bool:
    """Whether a BF16 copy of the model takes at most BF16_WEIGHTS_SHARE_OF_MEMORY of `memory_budget`
    bytes; always True for a dense model (which has no experts to keep in MXFP4)."""
    return not gguf_file.spec.is_moe or bf16_weight_bytes(gguf_file) <= BF16_WEIGHTS_SHARE_OF_MEMORY * memory_budget


def _capped_context(spec: ModelSpec, context_length: int) -> int:
    if context_length < 1:
        raise ValueError(f"context_length must be at least 1, got {context_length}")
    return min(int(context_length), int(spec.context_length))


def _cast_to_mxfp4(spec: ModelSpec, tensors: Mapping[str, ExpertArrays], mxfp4_head: bool,
                   cast_experts: bool = True) -> tuple[ModelSpec, dict[str, ExpertArrays]]:
    """The MXFP4 recipe: linear-layer weights cast (expert stacks too where cast_experts), everything
    else shared. With mxfp4_head the LM head is cast too; a tied head then gets its own MXFP4 copy while
    the BF16 embedding stays for lookups."""
    head = "output.weight"
    if mxfp4_head and spec.tied_output:
        tensors = {**tensors, head: tensors["token_embd.weight"]}
        spec = dataclasses.replace(spec, tied_output=False)
    # One weight at a time, so that a weight in column blocks is back in rows only while it is cast. Weights
    # already in MXFP4 blocks (uint8) stay as they are, experts one by one; experts are never in column blocks.
    cast: dict[str, ExpertArrays] = {}
    for name, tensor in tensors.items():
        if not quant.is_linear_weight(name) or (name == head and not mxfp4_head):
            continue
        if quant.is_expert_weight(name):
            if cast_experts:
                cast[name] = mixed_experts.mxfp4_experts(tensor, name)
        elif tensor.dtype != np.uint8:
            cast[name] = quant.cast_to_mxfp4(weight_layout.row_major(tensor), name)
    return spec, {**tensors, **cast}


def _loaded(gguf_file: GGUFFile, name: str, precision: str, shape: tuple[int, ...] | None,
            bf16_experts: np.ndarray) -> ExpertArrays:
    """A tensor of the file as the model holds it before any MXFP4 cast: MXFP4 linear weights at precision
    "mxfp4" and experts not in `bf16_experts` (bools per layer and expert) as stored where the file has
    MXFP4 blocks (uint8, views of the mapped file), cast to MXFP4 now otherwise, so that only one stack is
    ever whole in BF16 (mixed_experts.mixed_stack); every other matrix and expert as BF16 bits; vectors
    (`shape`, the decoder's, is 1-D: also a vector the file stores as one row) and the MoE router (which
    routes in float32) as float32."""
    info = gguf_file.tensor(name)
    if shape is not None and len(shape) == 1:
        return gguf_file.tensor_f32(name).reshape(shape)
    stored_mxfp4 = info.ggml_type == GGMLQuantizationType.MXFP4
    if quant.is_expert_weight(name):
        hot = bf16_experts[int(name.split(".")[1])]
        stored = _stored_blocks(info) if stored_mxfp4 else None
        if stored is not None and not hot.any():
            return stored
        return mixed_experts.mixed_stack(gguf_file.tensor_bf16(name), hot, stored, name)
    if precision == "mxfp4" and quant.is_linear_weight(name) and stored_mxfp4:
        return _stored_blocks(info)
    if len(info.shape) >= 2 and not quant.is_router_weight(name):
        return _bf16_matrix(gguf_file, name, precision)
    return gguf_file.tensor_f32(name)


def _stored_blocks(info: TensorInfo) -> np.ndarray:
    """An MXFP4 tensor's blocks as stored, (..., K / 32 * 17) uint8, a view of the mapped file."""
    return info.raw.reshape(*info.shape[:-1], quant.mxfp4_row_bytes(info.shape[-1]))


def _bf16_matrix(gguf_file: GGUFFile, name: str, precision: str) -> np.ndarray:
    """A matrix (or expert stack) of the file upcast to BF16 bits. At precision "bf16" a linear weight with a
    long K goes into column blocks, one weight at a time so that loading never holds two copies of the
    weights; experts stay row-major; at "mxfp4" the linear weights are about to be cast, which reads rows."""
    bits = gguf_file.tensor_bf16(name)
    blocked = precision == "bf16" and quant.is_linear_weight(name) and not quant.is_expert_weight(name)
    return weight_layout.in_column_blocks(bits) if blocked else bits

