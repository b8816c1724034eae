"""MXFP4 weights against int8 activations (csrc/kernels/isa/mxfp4_int8.cpp): every instruction set gives
the scalar reference's bits at every M, n range and thread count; the reference computes the documented
steps (checked against NumPy); bad arguments are refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from mlspecqd import _native
from mlspecqd.engine.quant import cast_to_mxfp4, mxfp4_to_float32

VECTOR_ISAS = [isa for isa in _native.supported_isas() if isa != "scalar"]


def int8_product(x: np.ndarray, blocks: np.ndarray, K: int, isa: str | None = None) -> np.ndarray:
    return _native.matmul_mxfp4(x, blocks, K, activations="int8", isa=isa)


def random_case(seed: int, M: int, N: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    weights[:, :32] *= 300.0  # one block with a much larger scale than the rest
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[0, 32:64] *= 1e-30  # a block of tiny activations
    x[-1, :32] = 0.0  # a block of zeros: scale 0, inverse 0
    return cast_to_mxfp4(weights), x


def quantized_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The documented quantization: per block of 32, d = absmax / 127 and q = rint(x * (127 / absmax)),
    both in float32, q clamped to [-127, 127]; a block of zeros takes q = 0."""
    blocks = x.reshape(x.shape[0], -1, 32)
    absmax = np.abs(blocks).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        inverse = np.where(absmax > 0, np.float32(127) / absmax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(blocks * inverse), -127, 127)
    return q.reshape(x.shape), (absmax / np.float32(127)).astype(np.float32)[..., 0]


def test_scalar_reference_is_the_documented_quantized_product():
    """Within float32 summation of the exact block dot products scaled per block."""
    M, N, K = 5, 41, 256
    blocks, x = random_case(1, M, N, K)
    q, scales = quantized_activations(x)
    weights = mxfp4_to_float32(blocks, K).astype(np.float64)
    dequantized = (q.reshape(M, -1, 32) * scales[..., None]).reshape(M, K).astype(np.float64)
    expected = dequantized @ weights.T
    bound = np.abs(dequantized) @ np.abs(weights).T
    y = int8_product(x, blocks, K, isa="scalar")
    assert np.all(np.abs(y - expected) <= K * 2.0**-23 * bound + 1e-30)
    # and it is the int8 product: far from the BF16-activation one where activations lose bits
    assert not np.array_equal(y, _native.matmul_mxfp4(x, blocks, K, isa="scalar"))


def test_error_against_the_exact_product_is_that_of_int8_activations():
    M, N, K = 4, 64, 1536
    blocks, x = random_case(2, M, N, K)
    exact = x.astype(np.float64) @ mxfp4_to_float32(blocks, K).astype(np.float64).T
    error = np.abs(int8_product(x, blocks, K, isa="scalar") - exact).max() / np.abs(exact).max()
    assert 1e-4 < error < 2e-2


@pytest.mark.parametrize("isa", VECTOR_ISAS)
def test_every_isa_gives_the_scalar_bits(isa):
    N, K = 203, 320  # N not a multiple of any row tile
    blocks, x = random_case(3, 70, N, K)  # M spans two chunks, several tiles, remainders
    x[3] *= 1e4
    np.testing.assert_array_equal(int8_product(x, blocks, K, isa=isa), int8_product(x, blocks, K, isa="scalar"))


@pytest.mark.parametrize("isa", VECTOR_ISAS)
def test_every_exponent_byte_and_code_gives_the_scalar_bits(isa):
    rng = np.random.default_rng(4)
    exponent_bytes = np.arange(0, 253, dtype=np.uint8)  # 253..255 hold infinite weights
    blocks = rng.integers(0, 256, size=(len(exponent_bytes), 2, 17), dtype=np.uint8)
    blocks[:, :, 0] = exponent_bytes[:, None]
    blocks = blocks.reshape(len(exponent_bytes), 34)
    x = rng.standard_normal((9, 64)).astype(np.float32)
    np.testing.assert_array_equal(int8_product(x, blocks, 64, isa=isa), int8_product(x, blocks, 64, isa="scalar"))


@pytest.mark.parametrize("isa", _native.supported_isas())
def test_a_row_has_the_same_bits_in_any_batch_and_thread_count(isa):
    N, K = 150, 8960 // 5  # K = 1792: activation rows overflow L1 in the larger tiles
    blocks, x = random_case(5, 19, N, K)
    alone = np.concatenate([int8_product(x[m:m + 1], blocks, K, isa=isa) for m in range(19)])
    for threads in (1, 2):
        _native.set_num_threads(threads)
        for M in (2, 5, 9, 19):
            np.testing.assert_array_equal(int8_product(x[:M], blocks, K, isa=isa), alone[:M],
                                          err_msg=f"{isa}, M={M}, {threads} threads")


def test_non_finite_activations_give_the_same_bits_everywhere():
    N, K = 16, 96
    blocks, x = random_case(6, 3, N, K)
    x[0, 5], x[1, 40], x[2, 70] = np.nan, np.inf, -np.inf
    reference = int8_product(x, blocks, K, isa="scalar")
    for isa in VECTOR_ISAS:
        np.testing.assert_array_equal(int8_product(x, blocks, K, isa=isa), reference, err_msg=isa)


def test_bad_arguments_are_refused_by_name():
    blocks, x = random_case(7, 1, 8, 64)
    with pytest.raises(ValueError, match="MXFP4 activations 'int4' are not 'bf16' or 'int8'"):
        _native.matmul_mxfp4(x, blocks, 64, activations="int4")
    with pytest.raises(ValueError, match="unknown instruction set 'avx9'"):
        _native.matmul_mxfp4(x, blocks, 64, activations="int8", isa="avx9")
    with pytest.raises(ValueError, match="unknown instruction set 'sse'"):
        _native.matmul_bf16(x, np.zeros((4, 64), np.uint16), isa="sse")
