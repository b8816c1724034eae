"""Experts in mixed precision (each expert of a stack BF16 or MXFP4, mlspecqd.engine.mixed_experts):
the expert block's rows equal those of the one-type block of their experts' type on every instruction
set, batch invariance, the model against the reference, loading by a mask, the MXFP4 sibling sharing
the MXFP4 experts one by one, and the choice of hot experts under a budget or a fraction."""

from __future__ import annotations

import numpy as np
import pytest
from test_moe import ROUTING_MARGIN, random_block

from mlspecqd import _native
from mlspecqd.engine import mixed_experts, reference_model
from mlspecqd.engine.mixed_experts import ExpertPrecisionError
from mlspecqd.engine.model import Model
from mlspecqd.engine.quant import cast_to_mxfp4, mxfp4_to_float32
from mlspecqd.gguf import open_gguf
from support.decoder_fixtures import MOE_ARCHITECTURES, TOLERANCE_BF16_INPUTS, random_tensors, tiny_spec
from support.gguf_fixtures import write_model_gguf

ISAS = _native.supported_isas()


def mixed(stack: np.ndarray, hot: np.ndarray) -> list[np.ndarray]:
    """Expert e of a BF16 stack as it is where hot[e], else cast to MXFP4 on its own."""
    return [np.ascontiguousarray(w) if h else cast_to_mxfp4(w) for w, h in zip(stack, hot)]


def as_float(stack) -> np.ndarray:
    """A stack (one array or a list) as float32 (experts, N, K): BF16 bits widened, MXFP4 decoded."""
    def one(array: np.ndarray) -> np.ndarray:
        if array.dtype == np.uint8:
            return mxfp4_to_float32(array, array.shape[-1] // 17 * 32)
        return (array.astype(np.uint32) << 16).view(np.float32)
    return np.stack([one(array) for array in stack]) if isinstance(stack, list) else one(stack)


def dequantized(tensors: dict) -> dict:
    return {name: as_float(tensor) if isinstance(tensor, list) or tensor.dtype == np.uint8 else tensor
            for name, tensor in tensors.items()}


# The expert block.

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_used", [1, 2])
def test_mixed_block_rows_equal_the_one_type_block_of_their_experts(isa, n_used):
    """A row whose experts are all BF16 (all MXFP4) gets the bits of the all-BF16 (all-MXFP4) block: each
    expert's inputs are prepared for its own type. With one expert per row, that is every row."""
    E, F, d, T = 16, 96, 128, 40
    router, gate, up, down = random_block(E, F, d, seed=21)
    h = np.random.default_rng(22).standard_normal((T, d)).astype(np.float32)
    hot = np.random.default_rng(23).permutation(E) < E // 2
    _native.set_isa(isa)
    out, experts, _ = _native.moe_block(h, router, mixed(gate, hot), mixed(up, hot), mixed(down, hot), n_used, True)
    in_bf16 = _native.moe_block(h, router, gate, up, down, n_used, True)[0]
    in_mxfp4 = _native.moe_block(h, router, *(cast_to_mxfp4(w) for w in (gate, up, down)), n_used, True)[0]
    all_hot, all_cold = hot[experts].all(axis=1), (~hot[experts]).all(axis=1)
    assert all_hot.any() and all_cold.any()
    assert np.array_equal(out[all_hot], in_bf16[all_hot])
    assert np.array_equal(out[all_cold], in_mxfp4[all_cold])
    if n_used == 1:
        assert (all_hot | all_cold).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_mixed_block_rows_have_the_same_bits_in_any_batch(isa, threads):
    E, F, d, T, k = 16, 96, 128, 21, 4
    router, gate, up, down = random_block(E, F, d, seed=3)
    hot = np.arange(E) % 3 == 0
    weights = (router, mixed(gate, hot), mixed(up, hot), mixed(down, hot))
    h = np.random.default_rng(4).standard_normal((T, d)).astype(np.float32)
    _native.set_isa(isa)
    _native.set_num_threads(threads)
    whole = _native.moe_block(h, *weights, k, True)[0]
    for rows in (np.arange(1), np.arange(5, 14), np.array([20, 3, 11])):
        assert np.array_equal(_native.moe_block(h[rows], *weights, k, True)[0], whole[rows])


def test_a_gate_and_up_expert_of_two_types_is_refused():
    router, gate, up, down = random_block(8, 64, 96, seed=1)
    hot = np.arange(8) < 4
    with pytest.raises(ValueError, match=r"gate and up expert 3 must have one type"):
        _native.moe_block(np.zeros((2, 96), np.float32), router, mixed(gate, hot), mixed(up, hot & (np.arange(8) != 3)),
                          down, 2, True)
    with pytest.raises(ValueError, match=r"moe_block: down\[7\] is not a NumPy array"):
        _native.moe_block(np.zeros((2, 96), np.float32), router, gate, up, [*mixed(down, hot)[:7], "x"], 2, True)


@pytest.mark.parametrize("change, message", [
    (lambda stack: stack[:-1], r"lists 7 experts, expected 8"),
    (lambda stack: [stack[0][:, :32].copy(), *stack[1:]],
     r"gate_exps\.weight'\]\[0\] has shape \(32, 32\), expected \(32, 64\)"),
    (lambda stack: [*stack[:-1], stack[-1][:, :17].copy()], r"\[7\] has shape \(32, 17\), expected \(32, 34\)"),
    (lambda stack: [stack[0].astype(np.float32), *stack[1:]], r"\[0\]: experts must be uint16 \(BF16 bits\) or uint8"),
])
def test_bad_mixed_stacks_are_named(change, message):
    spec = tiny_spec("qwen3moe")
    tensors = random_tensors(spec)
    name = "blk.1.ffn_gate_exps.weight"
    tensors[name] = change(mixed(tensors[name], np.arange(spec.n_experts) < 3))
    tensors["blk.1.ffn_up_exps.weight"] = mixed(tensors["blk.1.ffn_up_exps.weight"], np.arange(spec.n_experts) < 3)
    with pytest.raises(ValueError, match=message):
        Model.from_arrays(spec, tensors)


# The model.

def mixed_tensors(spec, tensors: dict, mask: np.ndarray) -> dict:
    return {name: mixed(array, mask[int(name.split(".")[1])]) if name.endswith("_exps.weight") else array
            for name, array in tensors.items()}


@pytest.mark.parametrize("architecture", MOE_ARCHITECTURES)
def test_mixed_model_matches_reference_and_is_batch_invariant(architecture):
    spec = tiny_spec(architecture)
    mask = np.random.default_rng(1).random((spec.n_layers, spec.n_experts)) < 0.5
    model = Model.from_arrays(spec, mixed_tensors(spec, random_tensors(spec, seed=11), mask))
    assert np.array_equal(model.bf16_experts(), mask)
    tokens = np.random.default_rng(12).integers(0, spec.vocab_size, 24)
    ffn_inputs: list[np.ndarray] = []
    expected = reference_model.forward(spec, dequantized(model.tensors), tokens, round_matmul_inputs=True,
                                       ffn_inputs=ffn_inputs)
    for layer, h in enumerate(ffn_inputs):
        router = model.tensors[f"blk.{layer}.ffn_gate_inp.weight"].astype(np.float64)
        assert reference_model.routing_margin(spec, router, h) > ROUTING_MARGIN, "pick another seed"
    for isa in ISAS:
        _native.set_isa(isa)
        whole = model.forward(tokens, 0, all_logits=True)
        assert np.abs(whole - expected).max() / expected.std() < TOLERANCE_BF16_INPUTS
        one_at_a_time = [model.forward(tokens[t : t + 1], t)[0] for t in range(len(tokens))]
        assert np.array_equal(np.stack(one_at_a_time), whole)


@pytest.mark.parametrize("architecture", ["qwen2moe", "qwen3moe"])
def test_load_with_a_mask_and_the_sibling_that_shares_its_mxfp4_experts(tmp_path, architecture):
    path = tmp_path / "m.gguf"
    write_model_gguf(path, architecture, seed=3)
    bf16 = Model.load(path)
    mask = np.zeros((bf16.spec.n_layers, bf16.spec.n_experts), dtype=bool)
    mask[0, [1, 2]] = mask[1, 3] = True
    model = Model.load(path, bf16_experts=mask)
    assert np.array_equal(model.bf16_experts(), mask)
    assert model.tensors["blk.0.attn_q.weight"].dtype == np.uint16
    # The same weights as the BF16 model with its cold experts cast: the same logits, bit for bit.
    cast = mixed_tensors(bf16.spec, bf16.tensors, mask)
    tokens = np.random.default_rng(4).integers(0, model.vocab_size, 12)
    assert np.array_equal(model.forward(tokens, 0, all_logits=True),
                          Model.from_arrays(bf16.spec, cast).forward(tokens, 0, all_logits=True))
    # Its MXFP4 sibling: the cold experts are the target's arrays, and it is the BF16 model's sibling.
    draft = model.sibling()
    for name in ("blk.0.ffn_gate_exps.weight", "blk.1.ffn_down_exps.weight"):
        layer = int(name.split(".")[1])
        for e, array in enumerate(draft.tensors[name]):
            assert array.dtype == np.uint8
            assert (array is model.tensors[name][e]) == (not mask[layer, e])
    assert np.array_equal(draft.forward(tokens, 0, all_logits=True), bf16.sibling().forward(tokens, 0, all_logits=True))
    # target + draft hold the cold experts once; the draft adds its dense MXFP4 weights and the hot experts.
    together = mixed_experts.resident_bytes([model.tensors, draft.tensors])
    hot_mxfp4 = sum(array.nbytes for name, stack in draft.tensors.items() if name.endswith("_exps.weight")
                    for e, array in enumerate(stack) if mask[int(name.split(".")[1]), e])
    dense_mxfp4 = sum(array.nbytes for name, array in draft.tensors.items()
                      if not name.endswith("_exps.weight") and array.dtype == np.uint8)
    assert together == mixed_experts.resident_bytes([model.tensors]) + hot_mxfp4 + dense_mxfp4


def test_stored_mxfp4_experts_stay_views_of_the_file_in_a_mix(tmp_path):
    from gguf import GGMLQuantizationType
    path = tmp_path / "m.gguf"
    experts = {f"blk.{layer}.ffn_{name}_exps.weight": GGMLQuantizationType.MXFP4
               for layer in range(2) for name in ("gate", "up", "down")}
    write_model_gguf(path, "qwen3moe", tensor_types=experts, seed=5)
    mask = np.zeros((2, 4), dtype=bool)
    mask[1, 0] = True
    with open_gguf(path) as gguf_file:
        raw = gguf_file.tensor("blk.1.ffn_up_exps.weight").raw
        model = Model.load(gguf_file, bf16_experts=mask)
    stack = model.tensors["blk.1.ffn_up_exps.weight"]
    assert stack[0].dtype == np.uint16 and not np.shares_memory(stack[0], raw)
    assert all(np.shares_memory(array, raw) for array in stack[1:])
    all_mxfp4 = Model.load(path, memory_budget=1).tensors["blk.1.ffn_up_exps.weight"]
    assert np.array_equal(as_float(stack), as_float(all_mxfp4))


def test_a_bad_mask_is_named(tmp_path):
    path = tmp_path / "m.gguf"
    write_model_gguf(path, "qwen3moe", seed=3)
    with pytest.raises(ExpertPrecisionError, match=r"bf16_experts must be bools of shape \(2, 4\), got bool \(2, 3\)"):
        Model.load(path, bf16_experts=np.zeros((2, 3), dtype=bool))
    dense = tmp_path / "dense.gguf"
    write_model_gguf(dense, "qwen3", seed=3)
    with pytest.raises(ExpertPrecisionError, match=r"the model has no experts"):
        Model.load(dense, bf16_experts=np.zeros((2, 4), dtype=bool))


# Choosing the hot experts.

def test_hot_experts_are_the_most_used_over_all_layers_ties_to_the_lower_index():
    rows = np.array([[5, 9, 1, 9], [9, 0, 7, 3]])
    expected = [[False, True, False, True], [True, False, False, False]]
    assert np.array_equal(mixed_experts.hot_expert_mask(rows, 3), expected)
    assert not mixed_experts.hot_expert_mask(rows, 0).any() and mixed_experts.hot_expert_mask(rows, 8).all()
    with pytest.raises(ExpertPrecisionError, match="cannot choose 9 BF16 experts out of 8"):
        mixed_experts.hot_expert_mask(rows, 9)


SIZES = mixed_experts.ExpertBytes(dense=1000, expert_mxfp4=17, expert_bf16=64, shape=(2, 4))


def test_the_budget_holds_as_many_bf16_experts_as_fit():
    rows = np.array([[1, 2, 3, 4], [8, 7, 6, 5]])
    assert SIZES.weights(0) == 1136 and SIZES.weights(8) == 1512
    assert mixed_experts.bf16_count_within(SIZES, 1136 + 3 * 47 + 46) == 3
    assert mixed_experts.bf16_count_within(SIZES, 10) == 0 and mixed_experts.bf16_count_within(SIZES, 10**6) == 8
    chosen = mixed_experts.choose_bf16_experts(SIZES, 1136 + 3 * 47, None, rows)
    assert np.array_equal(chosen, [[False] * 4, [True, True, True, False]])
    assert mixed_experts.choose_bf16_experts(SIZES, None, None, rows) is None
    assert mixed_experts.choose_bf16_experts(SIZES, 10**6, None, None).all()
    assert not mixed_experts.choose_bf16_experts(SIZES, 10, None, None).any()
    assert mixed_experts.choose_bf16_experts(SIZES, None, 0.25, rows).sum() == 2


@pytest.mark.parametrize("budget, fraction, rows, message", [
    (None, 1.5, None, r"bf16_experts must be a fraction in \[0, 1\], got 1.5"),
    (None, -0.1, None, r"bf16_experts must be a fraction in \[0, 1\], got -0.1"),
    (None, "half", None, r"bf16_experts must be a fraction in \[0, 1\], got 'half'"),
    (1200, 0.5, np.ones((2, 4)),
     r"bf16_experts 0.5 \(4 experts in BF16\) needs 1,324 bytes of weights, over the 1,200"),
    (None, 0.5, None, r"4 of 8 experts in BF16: choosing the hot ones needs router counts"),
    (None, 0.5, np.ones((3, 4)), r"router counts of shape \(3, 4\), but the model has .* \(2, 4\)"),
])
def test_bad_choices_are_named(budget, fraction, rows, message):
    with pytest.raises(ExpertPrecisionError, match=message):
        mixed_experts.choose_bf16_experts(SIZES, budget, fraction, rows)


def test_expert_bytes_of_a_file_add_up_to_the_loaded_model(tmp_path):
    path = tmp_path / "m.gguf"
    write_model_gguf(path, "qwen3moe", seed=3)
    with open_gguf(path) as gguf_file:
        sizes = mixed_experts.expert_bytes(gguf_file, "bf16")
    mask = np.zeros(sizes.shape, dtype=bool)
    mask[0, :3] = True
    assert Model.load(path, bf16_experts=mask).weight_bytes == sizes.weights(3)
    assert Model.load(path).weight_bytes == sizes.weights(sizes.n_experts_in_all)
