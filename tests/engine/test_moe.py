"""Mixture-of-Experts targets (qwen2moe, qwen3moe, Mixtral-style llama): the native forward against the
NumPy reference in BF16 and MXFP4, batch invariance on every instruction set, the expert block's
properties (renumbering experts, top-k = all experts), loading from GGUF and refusals of bad weights, and
the experts kept in MXFP4 where a BF16 copy would not fit in memory."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from mlspecqd import _native
from mlspecqd.engine import reference_model
from mlspecqd.engine.model import BF16_WEIGHTS_SHARE_OF_MEMORY, Model, available_memory, bf16_weight_bytes
from mlspecqd.engine.quant import cast_to_mxfp4, is_expert_weight, mxfp4_to_float32
from mlspecqd.gguf import open_gguf
from support.decoder_fixtures import (
    MOE_ARCHITECTURES,
    TOLERANCE_BF16_INPUTS,
    bf16_bits,
    random_tensors,
    tiny_spec,
)
from support.gguf_fixtures import write_model_gguf

ISAS = _native.supported_isas()
# Routing compares router logits; native and reference logits differ by rounding (about 1e-6 here).
# Tests assert that no row's choice is closer than this to a tie, so both sides choose alike.
ROUTING_MARGIN = 1e-3


def dequantized(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights as the reference reads them: MXFP4 blocks (of any rank) decoded to float32."""
    return {name: mxfp4_to_float32(array, array.shape[-1] // 17 * 32) if array.dtype == np.uint8 else array
            for name, array in tensors.items()}


def check_against_reference(model: Model, tokens: np.ndarray) -> None:
    router_inputs: list[np.ndarray] = []
    expected = reference_model.forward(model.spec, dequantized(model.tensors), tokens, round_matmul_inputs=True,
                                       ffn_inputs=router_inputs)
    for layer, h in enumerate(router_inputs):
        router = model.tensors[f"blk.{layer}.ffn_gate_inp.weight"].astype(np.float64)
        assert reference_model.routing_margin(model.spec, router, h) > ROUTING_MARGIN, "pick another seed"
    actual = model.forward(tokens, 0, all_logits=True)
    assert np.abs(actual - expected).max() / expected.std() < TOLERANCE_BF16_INPUTS


@pytest.mark.parametrize("precision", ["bf16", "mxfp4"])
@pytest.mark.parametrize("architecture", MOE_ARCHITECTURES)
def test_forward_matches_reference(architecture, precision):
    spec = tiny_spec(architecture)
    model = Model.from_arrays(spec, random_tensors(spec, seed=11), precision)
    if precision == "mxfp4":
        assert model.tensors["blk.0.ffn_up_exps.weight"].dtype == np.uint8
        assert model.tensors["blk.0.ffn_gate_inp.weight"].dtype == np.float32  # the router is not cast
    check_against_reference(model, np.random.default_rng(12).integers(0, spec.vocab_size, 24))


def test_unnormalized_weights_are_the_probabilities():
    """qwen2moe's routing weights do not sum to 1; flipping the flag changes the logits (it is used)."""
    spec = tiny_spec("qwen2moe")
    tensors = random_tensors(spec, seed=11)
    tokens = np.random.default_rng(12).integers(0, spec.vocab_size, 16)
    plain = Model.from_arrays(spec, tensors).forward(tokens, 0, all_logits=True)
    normalized = Model.from_arrays(dataclasses.replace(spec, expert_weights_normalized=True), tensors)
    check_against_reference(normalized, tokens)
    assert np.abs(normalized.forward(tokens, 0, all_logits=True) - plain).max() > 0.01


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("precision", ["bf16", "mxfp4"])
@pytest.mark.parametrize("architecture", MOE_ARCHITECTURES)
def test_rows_have_the_same_bits_in_any_batch(architecture, precision, threads, isa):
    spec = tiny_spec(architecture)
    model = Model.from_arrays(spec, random_tensors(spec, seed=5), precision)
    tokens = np.random.default_rng(6).integers(0, spec.vocab_size, 24)
    _native.set_isa(isa)
    _native.set_num_threads(threads)
    whole = model.forward(tokens, 0, all_logits=True)
    for split in (1, 7, 17):
        model.forward(tokens[:split], 0, all_logits=True)
        rest = model.forward(tokens[split:], split, all_logits=True)
        assert np.array_equal(rest, whole[split:])
    one_at_a_time = [model.forward(tokens[t : t + 1], t)[0] for t in range(len(tokens))]
    assert np.array_equal(np.stack(one_at_a_time), whole)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("architecture", MOE_ARCHITECTURES)
def test_sequences_batched_together_get_the_bits_they_get_alone(architecture, threads):
    """forward_batch routes the rows of several sequences to the experts together."""
    _native.set_num_threads(threads)
    spec = tiny_spec(architecture)
    model = Model.from_arrays(spec, random_tensors(spec, seed=8), "mxfp4")
    rng = np.random.default_rng(9)
    texts = [rng.integers(0, spec.vocab_size, 20) for _ in range(3)]
    alone = [model.forward(text, 0, all_logits=True) for text in texts]
    model.reserve_slots(3)
    cached = [0, 0, 0]
    for step in [(9, 1, 4), (1, 7, 1), (5, 2, 9)]:
        segments = [(slot, texts[slot][cached[slot] : cached[slot] + T], cached[slot], True)
                    for slot, T in enumerate(step)]
        for slot, logits in enumerate(model.forward_batch(segments)):
            assert np.array_equal(logits, alone[slot][cached[slot] : cached[slot] + step[slot]])
            cached[slot] += step[slot]


# The expert block on its own (_native.moe_block).

def random_block(E: int, F: int, d: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    router = (rng.standard_normal((E, d)) / np.sqrt(d)).astype(np.float32)
    gate, up = (bf16_bits(rng.standard_normal((E, F, d)) / np.sqrt(d)) for _ in range(2))
    down = bf16_bits(rng.standard_normal((E, d, F)) / np.sqrt(F))
    return router, gate, up, down


def block_reference(h, router, gate, up, down, n_used, normalized, round_inputs=True):
    """The block by reference_model's routing and float64 products of BF16-rounded inputs."""
    spec = tiny_spec("qwen3moe", n_experts=len(router), n_experts_used=n_used, expert_weights_normalized=normalized)
    weights = {name: reference_model.bf16_bits_to_float64(w) for name, w in (("g", gate), ("u", up), ("d", down))}
    rounded = reference_model.round_to_bf16 if round_inputs else (lambda x: x)
    experts, chosen = reference_model.route(spec, router.astype(np.float64), h.astype(np.float64))
    out = np.zeros(h.shape)
    for t in range(len(h)):
        for e, w in zip(experts[t], chosen[t]):
            x = rounded(h[t].astype(np.float64))
            hidden = reference_model.silu(x @ weights["g"][e].T) * (x @ weights["u"][e].T)
            out[t] += w * (rounded(hidden) @ weights["d"][e].T)
    return out, experts, chosen


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("isa", ISAS)
def test_block_matches_its_reference(isa, normalized):
    E, F, d, T, k = 16, 96, 128, 13, 4
    router, gate, up, down = random_block(E, F, d, seed=1)
    h = np.random.default_rng(2).standard_normal((T, d)).astype(np.float32)
    _native.set_isa(isa)
    out, experts, weights = _native.moe_block(h, router, gate, up, down, k, normalized)
    expected, expected_experts, expected_weights = block_reference(h, router, gate, up, down, k, normalized)
    assert np.array_equal(experts, expected_experts)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5)
    # float32 sums of BF16 products and one BF16 rounding of the hidden activations, which can flip
    assert np.abs(out - expected).max() < 1e-2 * np.abs(expected).max()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_block_rows_have_the_same_bits_in_any_batch(isa, threads):
    E, F, d, T, k = 16, 96, 128, 21, 4
    router, gate, up, down = random_block(E, F, d, seed=3)
    h = np.random.default_rng(4).standard_normal((T, d)).astype(np.float32)
    _native.set_isa(isa)
    _native.set_num_threads(threads)
    for blocks in (lambda w: w, lambda w: cast_to_mxfp4(w)):
        weights = (router, blocks(gate), blocks(up), blocks(down))
        whole = _native.moe_block(h, *weights, k, True)[0]
        for rows in (np.arange(1), np.arange(5, 14), np.array([20, 3, 11])):
            assert np.array_equal(_native.moe_block(h[rows], *weights, k, True)[0], whole[rows])


def test_a_row_of_nan_stays_in_its_row():
    """Overflowing activations can reach the router as NaN: that row's output is NaN (and the generation
    ends on its non-finite logits); the ranking stays a valid order and the other rows keep their bits."""
    E, F, d, T, k = 8, 64, 96, 6, 2
    weights = random_block(E, F, d, seed=10)
    h = np.random.default_rng(11).standard_normal((T, d)).astype(np.float32)
    h[3] = np.nan
    out, experts, _ = _native.moe_block(h, *weights, k, True)
    assert np.isnan(out[3]).all() and list(experts[3]) == [0, 1]
    others = np.array([0, 1, 2, 4, 5])
    assert np.array_equal(out[others], _native.moe_block(h[others], *weights, k, True)[0])


def test_renumbering_experts_with_the_router_rows_changes_nothing():
    E, F, d, T, k = 16, 64, 96, 17, 3
    router, gate, up, down = random_block(E, F, d, seed=5)
    h = np.random.default_rng(6).standard_normal((T, d)).astype(np.float32)
    permutation = np.random.default_rng(7).permutation(E)
    out, experts, weights = _native.moe_block(h, router, gate, up, down, k, True)
    renumbered = [np.ascontiguousarray(w[permutation]) for w in (router, gate, up, down)]
    out_p, experts_p, weights_p = _native.moe_block(h, *renumbered, k, True)
    assert np.array_equal(out_p, out)
    assert np.array_equal(weights_p, weights)
    assert np.array_equal(permutation[experts_p], experts)


@pytest.mark.parametrize("normalized", [False, True])
def test_all_experts_chosen_is_the_dense_weighted_sum(normalized):
    """With n_used = E every expert runs with its softmax probability: sum_e p_e(h) expert_e(h)."""
    E, F, d, T = 6, 64, 96, 9
    router, gate, up, down = random_block(E, F, d, seed=8)
    h = np.random.default_rng(9).standard_normal((T, d)).astype(np.float32)
    out, _, weights = _native.moe_block(h, router, gate, up, down, E, normalized)
    x = reference_model.round_to_bf16(h.astype(np.float64))
    g, u, dn = (reference_model.bf16_bits_to_float64(w) for w in (gate, up, down))
    hidden = reference_model.silu(np.einsum("td,efd->tef", x, g)) * np.einsum("td,efd->tef", x, u)
    probabilities = reference_model.softmax(h.astype(np.float64) @ router.T.astype(np.float64))
    if normalized:  # a no-op up to rounding: all the probabilities are chosen
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    dense = np.einsum("te,ted->td", probabilities, np.einsum("tef,edf->ted", reference_model.round_to_bf16(hidden), dn))
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-6)  # softmax over all experts sums to 1 either way
    assert np.abs(out - dense).max() < 1e-2 * np.abs(dense).max()


# Loading from GGUF, and refusals.

@pytest.mark.parametrize("architecture", ["qwen2moe", "qwen3moe", "mixtral"])
def test_gguf_file_loads_and_matches_reference(tmp_path, architecture):
    path = tmp_path / f"{architecture}.gguf"
    mixtral = architecture == "mixtral"
    overrides = {"n_experts": 4, "n_experts_used": 2, "expert_d_ff": 64, "d_ff": 64} if mixtral else {}
    write_model_gguf(path, "llama" if mixtral else architecture, overrides, seed=3)
    model = Model.load(path)
    assert model.spec.is_moe
    assert model.tensors["blk.0.ffn_gate_inp.weight"].dtype == np.float32
    assert model.tensors["blk.0.ffn_down_exps.weight"].shape == (model.spec.n_experts, 64, model.spec.expert_d_ff)
    check_against_reference(model, np.random.default_rng(4).integers(0, model.vocab_size, 12))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("blk.1.ffn_up_exps.weight"), r"missing tensor 'blk\.1\.ffn_up_exps\.weight'"),
        (lambda t: t.pop("blk.0.ffn_gate_inp.weight"), r"missing tensor 'blk\.0\.ffn_gate_inp\.weight'"),
        (lambda t: t.update({"blk.0.ffn_down_exps.weight": t["blk.0.ffn_down_exps.weight"][:7]}),
         r"weights\['blk\.0\.ffn_down_exps\.weight'\] has shape \(7, 64, 32\), expected \(8, 64, 32\)"),
        (lambda t: t.update({"blk.1.ffn_gate_exps.weight": t["blk.1.ffn_gate_exps.weight"][:, :, :32].copy()}),
         r"weights\['blk\.1\.ffn_gate_exps\.weight'\] has shape \(8, 32, 32\), expected \(8, 32, 64\)"),
        (lambda t: t.update({"blk.0.ffn_gate_inp.weight": bf16_bits(t["blk.0.ffn_gate_inp.weight"])}),
         r"weights\['blk\.0\.ffn_gate_inp\.weight'\] must be float32, got uint16"),
        (lambda t: t.update({"blk.0.ffn_up_exps.weight": t["blk.0.ffn_up_exps.weight"].astype(np.float32)}),
         r"weights\['blk\.0\.ffn_up_exps\.weight'\]: experts must be uint16 \(BF16 bits\) or uint8"),
        (lambda t: t.update({"blk.0.ffn_up_exps.weight": cast_to_mxfp4(t["blk.0.ffn_up_exps.weight"])}),
         r"ffn_gate_exps\.weight'\] and weights\['blk\.0\.ffn_up_exps\.weight'\] must have one type"),
        (lambda t: t.pop("blk.0.ffn_up_shexp.weight"), r"missing tensor 'blk\.0\.ffn_up_shexp\.weight'"),
    ],
)
def test_bad_expert_weights_are_named(change, message):
    spec = tiny_spec("qwen2moe")
    tensors = random_tensors(spec)
    change(tensors)
    with pytest.raises(ValueError, match=message):
        Model.from_arrays(spec, tensors)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_experts_used": 9}, r"n_experts_used = 9 is outside \[1, 8\]"),
        ({"n_experts_used": 0}, r"n_experts_used = 0 is outside \[1, 8\]"),
        ({"expert_d_ff": 0}, r"expert_d_ff = 0 is outside"),
    ],
)
def test_bad_expert_config_is_named(overrides, message):
    spec = tiny_spec("qwen3moe")
    tensors = random_tensors(spec)
    with pytest.raises(ValueError, match=message):
        Model.from_arrays(dataclasses.replace(spec, **overrides), tensors)


def test_gguf_with_an_expert_count_that_does_not_match_is_refused(tmp_path):
    path = tmp_path / "m.gguf"
    write_model_gguf(path, "qwen3moe", extra_metadata={"qwen3moe.expert_count": 5})
    message = r"tensor blk\.0\.ffn_gate_inp\.weight: shape \(4, 64\) does not match \(5, 64\)"
    with pytest.raises(ValueError, match=message):
        Model.load(path)


def test_mxfp4_experts_in_the_file_are_used_as_stored(tmp_path):
    """At precision "mxfp4" the file's MXFP4 experts are views of its bytes, not upcast and cast again;
    at "bf16" they are upcast, and both models match the reference on the values the file holds."""
    path = tmp_path / "m.gguf"
    experts = {f"blk.{layer}.ffn_{name}_exps.weight": GGMLQuantizationType.MXFP4
               for layer in range(2) for name in ("gate", "up", "down")}
    stored = write_model_gguf(path, "qwen3moe", tensor_types=experts, seed=5)
    tokens = np.random.default_rng(6).integers(0, 320, 12)
    with open_gguf(path) as gguf_file:
        raw = gguf_file.tensor("blk.1.ffn_down_exps.weight").raw
        draft = Model.load(gguf_file, precision="mxfp4")
        upcast = Model.load(gguf_file)
    blocks = draft.tensors["blk.1.ffn_down_exps.weight"]
    assert blocks.shape == (4, 64, 17) and np.shares_memory(blocks, raw)
    name = "blk.1.ffn_down_exps.weight"
    assert np.array_equal(dequantized(draft.tensors)[name], stored[name])
    assert upcast.tensors["blk.1.ffn_down_exps.weight"].dtype == np.uint16
    check_against_reference(draft, tokens)
    check_against_reference(upcast, tokens)


def test_shared_expert_gate_stored_as_one_row_loads(tmp_path):
    """llama.cpp's converter writes qwen2moe's shared-expert gate as a (1, d_model) matrix; it is the same
    model as with a (d_model,) vector."""
    stored = write_model_gguf(tmp_path / "vector.gguf", "qwen2moe", seed=7)
    gates = [f"blk.{layer}.ffn_gate_inp_shexp.weight" for layer in range(2)]
    rows = {name: (stored[name].reshape(1, -1), GGMLQuantizationType.F32) for name in gates}
    others = {name: values for name, values in stored.items() if name not in gates}
    write_model_gguf(tmp_path / "row.gguf", "qwen2moe", tensors=others, drop_tensors=gates, extra_tensors=rows)
    tokens = np.arange(10)
    as_vector = Model.load(tmp_path / "vector.gguf").forward(tokens, 0, all_logits=True)
    as_row = Model.load(tmp_path / "row.gguf")
    assert as_row.tensors[gates[0]].shape == (64,)
    assert np.array_equal(as_row.forward(tokens, 0, all_logits=True), as_vector)


# A memory budget the BF16 copy does not fit in: experts in MXFP4, everything else in BF16.

def budget_for(path, fits: bool) -> int:
    """The smallest memory budget in which the file's BF16 copy fits, or one byte less."""
    with open_gguf(path) as gguf_file:
        smallest = math.ceil(bf16_weight_bytes(gguf_file) / BF16_WEIGHTS_SHARE_OF_MEMORY)
    return smallest if fits else smallest - 1


@pytest.mark.parametrize("architecture", ["qwen2moe", "qwen3moe"])
def test_moe_over_the_memory_budget_keeps_its_experts_in_mxfp4(tmp_path, architecture):
    path = tmp_path / "m.gguf"
    write_model_gguf(path, architecture, seed=3)
    in_bf16 = Model.load(path, memory_budget=budget_for(path, fits=True))
    assert all(array.dtype != np.uint8 for array in in_bf16.tensors.values())
    model = Model.load(path, memory_budget=budget_for(path, fits=False))
    assert model.precision == "bf16"
    for name, array in model.tensors.items():
        expected_dtype = np.uint8 if is_expert_weight(name) else in_bf16.tensors[name].dtype
        assert array.dtype == expected_dtype, name
    # The BF16 model with its experts cast afterwards: the same weights, so the same logits bit for bit.
    cast = {name: cast_to_mxfp4(array) if is_expert_weight(name) else array for name, array in in_bf16.tensors.items()}
    tokens = np.random.default_rng(4).integers(0, model.vocab_size, 12)
    expected = Model.from_arrays(in_bf16.spec, cast).forward(tokens, 0, all_logits=True)
    assert np.array_equal(model.forward(tokens, 0, all_logits=True), expected)
    check_against_reference(model, tokens)


def test_mxfp4_experts_in_the_file_stay_as_stored_when_over_the_budget(tmp_path):
    path = tmp_path / "m.gguf"
    experts = {f"blk.{layer}.ffn_{name}_exps.weight": GGMLQuantizationType.MXFP4
               for layer in range(2) for name in ("gate", "up", "down")}
    write_model_gguf(path, "qwen3moe", tensor_types=experts, seed=5)
    with open_gguf(path) as gguf_file:
        raw = gguf_file.tensor("blk.0.ffn_up_exps.weight").raw
        model = Model.load(gguf_file, memory_budget=1)
    assert np.shares_memory(model.tensors["blk.0.ffn_up_exps.weight"], raw)
    assert model.tensors["blk.0.attn_q.weight"].dtype == np.uint16
    check_against_reference(model, np.random.default_rng(6).integers(0, 320, 12))


def test_dense_models_load_the_same_whatever_the_budget(tmp_path):
    path = tmp_path / "dense.gguf"
    write_model_gguf(path, "qwen3", seed=2)
    default, tiny = Model.load(path), Model.load(path, memory_budget=1)
    assert tiny.tensors.keys() == default.tensors.keys()
    assert all(np.array_equal(tiny.tensors[name], array) and tiny.tensors[name].dtype == array.dtype
               for name, array in default.tensors.items())


def test_available_memory_is_positive_and_below_the_machine_total():
    assert 0 < available_memory() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("architecture", MOE_ARCHITECTURES)
def test_expert_rows_count_the_reference_routing(architecture):
    spec = tiny_spec(architecture)
    model = Model.from_arrays(spec, random_tensors(spec, seed=11))
    tokens = np.random.default_rng(12).integers(0, spec.vocab_size, 24)
    router_inputs: list[np.ndarray] = []
    reference_model.forward(model.spec, model.tensors, tokens, round_matmul_inputs=True, ffn_inputs=router_inputs)
    expected = np.zeros((spec.n_layers, spec.n_experts), dtype=np.int64)
    for layer, h in enumerate(router_inputs):
        router = model.tensors[f"blk.{layer}.ffn_gate_inp.weight"].astype(np.float64)
        assert reference_model.routing_margin(model.spec, router, h) > ROUTING_MARGIN, "pick another seed"
        experts, _ = reference_model.route(model.spec, router, h)
        expected[layer] = np.bincount(np.ravel(experts), minlength=spec.n_experts)

    model.forward(tokens[:10], 0)
    model.forward(tokens[10:], 10, all_logits=True)
    assert np.array_equal(model.expert_rows(), expected)
    assert model.expert_rows().sum() == spec.n_layers * len(tokens) * spec.n_experts_used
    model.reset_expert_rows()
    assert not model.expert_rows().any()


def test_a_dense_model_has_no_expert_rows():
    spec = tiny_spec("llama")
    model = Model.from_arrays(spec, random_tensors(spec, seed=1))
    model.forward([1, 2, 3], 0)
    assert model.expert_rows().shape == (spec.n_layers, 0)
