"""bench/moefy.py: a dense qwen2 model split into a qwen2moe one (shared expert + routed experts whose
sum is the dense FFN), and the routing-weight scale ({arch}.expert_weights_scale) that makes the sum
unweighted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mlspecqd.engine import reference_model
from mlspecqd.engine.model import Model
from mlspecqd.gguf import GGUFError
from support.bench_modules import bench_module
from support.decoder_fixtures import TOLERANCE_BF16_INPUTS, TOLERANCE_EXACT_INPUTS, random_tensors, tiny_spec
from support.gguf_fixtures import write_model_gguf

moefy = bench_module("moefy")

# The tiny dense model: d_ff 160 = a shared expert of 32 + 4 experts of 32 (MXFP4 blocks of K).
D_FF, SHARED, EXPERTS = 160, 32, 4


@pytest.fixture(scope="module")
def dense_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("moefy") / "dense.gguf"
    write_model_gguf(path, "qwen2", {"d_ff": D_FF})
    return path


def tokens(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 320, count)


def moefied(dense_path, tmp_path, used: int, clustering: str = "kmeans"):
    path = tmp_path / f"moe-k{used}-{clustering}.gguf"
    report = moefy.moefy(dense_path, path, EXPERTS, used, shared_width=SHARED, clustering=clustering,
                         calibration_tokens=tokens(96, 1), held_out_tokens=tokens(48, 2))
    return path, report


@pytest.mark.parametrize("clustering", moefy.CLUSTERINGS)
def test_all_experts_equal_the_dense_model(dense_path, tmp_path, clustering):
    # With k = E every neuron runs once with weight exactly 1 (E and k powers of two, the softmax terms
    # all exp(0)) and the shared expert exactly as 1/2 x its doubled down weights: the FFN sums the same
    # products as the dense one in another float32 order. Where that order moves an activation across a
    # BF16 rounding boundary before the next product, it moves by 2^-8 and travels on, as between the
    # native decoder and the float64 reference: hence TOLERANCE_BF16_INPUTS of the logits' spread.
    path, _ = moefied(dense_path, tmp_path, EXPERTS, clustering)
    text = tokens(40, 3)
    with Model.load(dense_path) as dense, Model.load(path) as moe:
        assert moe.spec.architecture == "qwen2moe" and moe.spec.n_experts_used == EXPERTS
        expected = dense.forward(text, 0, all_logits=True)
        actual = moe.forward(text, 0, all_logits=True)
    error = np.abs(actual - expected).max() / expected.std()
    assert error < TOLERANCE_BF16_INPUTS, f"error {error:.1e} of the spread"
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_fewer_experts_load_and_run(dense_path, tmp_path):
    path, report = moefied(dense_path, tmp_path, 2)
    assert 0.0 <= report["held_out_recall"] <= 1.0 and len(report["layers"]) == 2
    text = tokens(24, 4)
    with Model.load(path) as moe, Model.load(dense_path) as dense:
        logits = moe.forward(text, 0, all_logits=True)
        assert logits.shape == (24, 320) and np.isfinite(logits).all()
        assert (moe.expert_rows().sum(axis=1) == 24 * 2).all()
        # Half the experts drop part of the FFN: not the dense model any more.
        assert np.abs(logits - dense.forward(text, 0, all_logits=True)).max() > TOLERANCE_BF16_INPUTS


@pytest.mark.parametrize("clustering", moefy.CLUSTERINGS)
def test_neuron_split_is_a_partition(clustering):
    contributions = np.abs(np.random.default_rng(5).standard_normal((64, 576)))
    split = moefy.split_neurons(contributions, 64, 4, clustering)
    assert split.shared.shape == (64,) and split.experts.shape == (4, 128)
    assert np.array_equal(np.sort(np.concatenate([split.shared, split.experts.ravel()])), np.arange(576))
    most_active = np.argsort(-contributions.mean(axis=0))[:64]
    assert np.array_equal(split.shared, np.sort(most_active))


def test_scaled_router_keeps_the_ranking_and_weighs_one():
    rng = np.random.default_rng(6)
    router, h = rng.standard_normal((16, 64)).astype(np.float32), rng.standard_normal((50, 64)).astype(np.float32)
    scaled = moefy.scaled_router(router, h)
    logits = h @ scaled.T
    assert np.abs(logits).max() <= moefy.ROUTER_LOGIT_BOUND
    ranking = np.argsort(-(h @ router.T), axis=1, kind="stable")
    assert np.array_equal(np.argsort(-logits, axis=1, kind="stable"), ranking)
    assert np.all(np.exp(logits - logits.max(axis=1, keepdims=True)) == np.float32(1.0))


@pytest.mark.parametrize(("d_ff", "shared", "experts", "used", "problem"), [
    (160, 32, 3, 1, "does not split into 3 experts"),
    (160, 32, 8, 1, "of a multiple of 32"),
    (160, 40, 4, 1, "multiple of 32"),
    (160, 32, 4, 5, r"in \[1, experts\]: got 5 of 4"),
    (160, 32, 4, 0, r"in \[1, experts\]"),
])
def test_bad_arguments_are_named(d_ff, shared, experts, used, problem):
    with pytest.raises(moefy.MoefyError, match=problem):
        moefy.expert_width(d_ff, shared, experts, used)


def test_refuses_a_model_that_is_not_dense_qwen2(tmp_path):
    path = tmp_path / "moe.gguf"
    write_model_gguf(path, "qwen2moe")
    with pytest.raises(moefy.MoefyError, match="a dense qwen2 model is needed"):
        moefy.moefy(path, tmp_path / "out.gguf", 4, 2, shared_width=32, calibration_tokens=tokens(8, 0),
                    held_out_tokens=tokens(8, 0))
    with pytest.raises(moefy.MoefyError, match="clustering 'spectral'"):
        moefy.split_neurons(np.ones((4, 160)), 32, 4, "spectral")
    assert not (tmp_path / "out.gguf").exists()


def test_expert_weights_scale_multiplies_the_routing_weights():
    spec = dataclasses.replace(tiny_spec("qwen3moe"), expert_weights_scale=2.5)
    tensors = random_tensors(spec)
    text = tokens(20, 7) % spec.vocab_size
    with Model.from_arrays(spec, tensors) as model:
        actual = model.forward(text, 0, all_logits=True)
    expected = reference_model.forward(spec, tensors, text, round_matmul_inputs=True)
    unscaled = reference_model.forward(dataclasses.replace(spec, expert_weights_scale=1.0), tensors, text,
                                       round_matmul_inputs=True)
    assert np.abs(actual - expected).max() / expected.std() < TOLERANCE_BF16_INPUTS
    assert np.abs(unscaled - expected).max() / expected.std() > 10 * TOLERANCE_EXACT_INPUTS


def test_bad_expert_weights_scale_is_named(tmp_path):
    path = tmp_path / "scaled.gguf"
    write_model_gguf(path, "qwen2moe", extra_metadata={"qwen2moe.expert_weights_scale": -1.0})
    with pytest.raises(GGUFError, match=r"qwen2moe\.expert_weights_scale.*must be positive"):
        Model.load(path)
    spec = dataclasses.replace(tiny_spec("qwen3moe"), expert_weights_scale=0.0)
    with pytest.raises(ValueError, match="expert_weights_scale must be positive"):
        Model.from_arrays(spec, random_tensors(spec))
