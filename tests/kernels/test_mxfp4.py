"""MXFP4: the native cast against a NumPy reference of the OCP rules (bit for bit), decoding against
gguf.quants, the GEMM of every instruction set against the scalar reference, and batch invariance."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from mlspecqd import _native
from mlspecqd.engine.quant import QuantizationError, cast_linear_weights_to_mxfp4, cast_to_mxfp4, mxfp4_to_float32

E2M1_MAGNITUDES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def reference_cast(values: np.ndarray) -> np.ndarray:
    """The OCP rules written plainly: float32 (n, 32) -> uint8 (n, 17). Nearest E2M1 value by distance,
    ties to the even code; exponent from frexp (exact)."""
    blocks = values.reshape(-1, 32).astype(np.float64)
    magnitude = np.abs(blocks)
    absmax = magnitude.max(axis=1)
    _, exponent = np.frexp(absmax)  # absmax = mantissa * 2^exponent with mantissa in [0.5, 1)
    scale_exponent = np.where(absmax > 0, np.maximum(exponent - 1 - 2, -127), -127)
    scaled = magnitude / np.exp2(scale_exponent)[:, None]
    distance = np.abs(scaled[..., None] - E2M1_MAGNITUDES)
    nearest = distance == distance.min(axis=-1, keepdims=True)
    even = (np.arange(8) % 2) == 0
    # Two nearest values are neighbours, one with an even code: take it; else the only one.
    index = np.where((nearest & even).any(axis=-1), np.argmax(nearest & even, axis=-1), np.argmax(nearest, axis=-1))
    codes = (index | (np.signbit(blocks).astype(np.int64) << 3)).astype(np.uint8)
    out = np.empty((blocks.shape[0], 17), dtype=np.uint8)
    out[:, 0] = (scale_exponent + 127).astype(np.uint8)
    out[:, 1:] = codes[:, :16] | (codes[:, 16:] << 4)
    return out.reshape(*values.shape[:-1], values.shape[-1] // 32 * 17)


def gguf_quantize(values: np.ndarray) -> np.ndarray:
    return gguf.quants.quantize(values, gguf.GGMLQuantizationType.MXFP4)


def random_blocks(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """Normal values, each block scaled by its own power of two across the whole float32 range."""
    values = rng.standard_normal((n_blocks, 32))
    values *= np.exp2(rng.integers(-140, 120, size=(n_blocks, 1)).astype(np.float64))
    return values.astype(np.float32)


def adversarial_blocks(rng: np.random.Generator) -> np.ndarray:
    """Blocks built to hit every rounding rule: exact midpoints, their float neighbours, values that
    saturate, zeros of both signs, subnormals, the largest floats, powers of two and just below them."""
    midpoints = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=np.float32)
    around = np.concatenate([midpoints, np.nextafter(midpoints, 0), np.nextafter(midpoints, 8)])
    grid = np.array([0.5, 1, 1.5, 2, 3, 4, 6, 6.5, 7, 7.999], dtype=np.float32)
    cells = []
    for power in [0, -20, 30, -126, -127, -130, 100, 125]:
        for values in (around, grid, -around, -grid):
            block = np.zeros(32, dtype=np.float32)
            block[: len(values)] = values
            block[31] = 4.0  # absmax in [4, 8): the scale exponent is `power` exactly
            block = rng.permutation(block)
            with np.errstate(over="ignore", under="ignore"):
                cells.append((block.astype(np.float64) * 2.0**power).astype(np.float32))
    specials = [
        np.zeros(32, np.float32),
        np.full(32, -0.0, np.float32),
        np.array([0.0, -0.0] * 16, np.float32),
        np.full(32, np.finfo(np.float32).max, np.float32),
        np.linspace(-float(np.finfo(np.float32).max), float(np.finfo(np.float32).max), 32).astype(np.float32),
        (np.arange(32) - 16).astype(np.float32) * np.float32(2.0**-149),  # subnormals
        np.full(32, np.float32(2.0**-126)) * np.float32(0.75),
        np.full(32, np.float32(8.0) * (1 - np.float32(2.0**-24))),  # just below a power of two
        np.full(32, -np.float32(2.0**-100) * (1 - np.float32(2.0**-24))),
        np.float32(2.0**-125) * rng.standard_normal(32).astype(np.float32),
    ]
    return np.stack(cells + specials)


def test_cast_matches_ocp_reference_on_random_blocks():
    rng = np.random.default_rng(0)
    values = random_blocks(rng, 4000).reshape(100, 40 * 32)
    np.testing.assert_array_equal(cast_to_mxfp4(values), reference_cast(values))


def test_cast_matches_ocp_reference_on_adversarial_blocks_every_isa():
    values = adversarial_blocks(np.random.default_rng(1)).reshape(-1, 64)
    expected = reference_cast(values)
    for isa in _native.supported_isas():
        _native.set_isa(isa)
        np.testing.assert_array_equal(cast_to_mxfp4(values), expected, err_msg=isa)


def test_cast_of_bf16_equals_cast_of_its_float32_values_every_isa():
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 1 << 16, size=(64, 256), dtype=np.uint16)
    bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF  # exponent all ones is NaN/Inf: make those finite
    as_float = (bits.astype(np.uint32) << 16).view(np.float32)
    expected = reference_cast(as_float)
    for isa in _native.supported_isas():
        _native.set_isa(isa)
        np.testing.assert_array_equal(cast_to_mxfp4(bits), expected, err_msg=isa)


def test_cast_every_isa_and_thread_count_gives_the_same_bytes():
    values = random_blocks(np.random.default_rng(3), 2 * 1024 + 7)  # several thread chunks and a tail
    expected = reference_cast(values)
    for isa in _native.supported_isas():
        _native.set_isa(isa)
        for threads in (1, 2):
            _native.set_num_threads(threads)
            np.testing.assert_array_equal(cast_to_mxfp4(values), expected, err_msg=f"{isa}, {threads} threads")


def test_cast_keeps_leading_axes():
    values = random_blocks(np.random.default_rng(4), 3 * 5 * 2).reshape(3, 5, 64)
    blocks = cast_to_mxfp4(values)
    assert blocks.shape == (3, 5, 34)
    np.testing.assert_array_equal(blocks.reshape(15, 34), reference_cast(values.reshape(15, 64)))


def test_cast_documented_choices_zero_and_negative_zero_and_range():
    blocks = cast_to_mxfp4(np.array([[0.0] * 32, [-0.0] * 32, [-1e-30] + [1.0] * 31], np.float32))
    assert list(blocks[0]) == [0] * 17  # all-zero block: exponent byte 0, zero codes
    assert blocks[1, 0] == 0 and all(blocks[1, 1:] == 0x88)  # -0.0 keeps its sign: code 8
    assert blocks[2, 1] & 0x0F == 8  # a negative value rounding to zero: code 8 too
    huge = cast_to_mxfp4(np.full((1, 32), np.finfo(np.float32).max, np.float32))
    assert huge[0, 0] == 252 and all(huge[0, 1:] == 0x77)  # largest finite: byte 252, saturated to 6


def test_cast_refuses_nan_and_infinity_naming_tensor_and_element():
    values = np.ones((64, 1024), np.float32)  # 2048 blocks: two threads find one bad value each
    values[20, 37] = np.nan
    values[50, 1] = np.inf
    for threads in (1, 2):
        _native.set_num_threads(threads)
        with pytest.raises(QuantizationError, match=r"blk\.0\.ffn_up\.weight: element \[20, 37\] is nan"):
            cast_to_mxfp4(values, name="blk.0.ffn_up.weight")
    bf16 = np.full((2, 32), 0x3F80, np.uint16)
    bf16[1, 5] = 0xFF80  # -inf
    with pytest.raises(QuantizationError, match=r"w: element \[1, 5\] is -inf"):
        cast_to_mxfp4(bf16, name="w")


@pytest.mark.parametrize(
    "weights, message",
    [
        (np.ones((2, 48), np.float32), "K=48 is not a positive multiple of 32"),
        (np.ones((2, 0), np.float32), "K=0 is not a positive multiple of 32"),
        (np.ones((2, 32), np.float64), "cannot cast dtype float64"),
        (np.float32(1.0), "0-d array"),
    ],
)
def test_cast_refuses_bad_shapes_and_dtypes(weights, message):
    with pytest.raises(QuantizationError, match=message):
        cast_to_mxfp4(weights, name="t")


def test_native_cast_refuses_bad_input_too():
    with pytest.raises(ValueError, match="K=33"):
        _native.cast_mxfp4(np.ones((1, 33), np.float32))
    with pytest.raises(ValueError, match="int32"):
        _native.cast_mxfp4(np.ones((1, 32), np.int32))


def test_decode_equals_gguf_dequantize_for_every_exponent_byte_and_code():
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 256, size=(256 * 4, 17), dtype=np.uint8)
    blocks[:, 0] = np.repeat(np.arange(256, dtype=np.uint8), 4)
    blocks[0::4, 1:9] = np.arange(16, dtype=np.uint8)[0::2] | (np.arange(16, dtype=np.uint8)[1::2] << 4)
    mine = mxfp4_to_float32(blocks.reshape(64, 16 * 17), K=16 * 32)
    with np.errstate(over="ignore"):
        theirs = gguf.quants.dequantize(blocks.reshape(64, 16 * 17), gguf.GGMLQuantizationType.MXFP4)
    np.testing.assert_array_equal(mine.view(np.uint32), theirs.view(np.uint32))


def test_decode_refuses_bad_blocks():
    with pytest.raises(QuantizationError, match=r"last axis is not 34 bytes"):
        mxfp4_to_float32(np.zeros((2, 35), np.uint8), K=64)
    with pytest.raises(QuantizationError, match="uint8"):
        mxfp4_to_float32(np.zeros((2, 34), np.int8), K=64)
    with pytest.raises(QuantizationError, match="K=40"):
        mxfp4_to_float32(np.zeros((2, 34), np.uint8), K=40)


def test_round_trip_error_is_at_most_twice_the_block_scale():
    values = random_blocks(np.random.default_rng(6), 500).reshape(50, 320)
    decoded = mxfp4_to_float32(cast_to_mxfp4(values), K=320)
    blocks, decoded_blocks = values.reshape(-1, 32).astype(np.float64), decoded.reshape(-1, 32)
    scale = np.exp2(np.maximum(np.floor(np.log2(np.abs(blocks).max(axis=1))) - 2, -127))[:, None]
    # Half a step is 0.25 * scale below 2, 0.5 below 4, 1 up to 6; saturating [6, 8) to 6 costs < 2 * scale.
    assert np.all(np.abs(decoded_blocks - blocks) <= 2 * scale)


# --- where gguf.quants' quantizer differs (documented in mlspecqd/quant.py) ---


def without_negative_zero_codes(blocks: np.ndarray) -> np.ndarray:
    grouped = blocks.reshape(-1, 17).copy()
    low, high = grouped[:, 1:] & 0x0F, grouped[:, 1:] >> 4
    grouped[:, 1:] = np.where(low == 8, 0, low) | (np.where(high == 8, 0, high) << 4)
    return grouped.reshape(blocks.shape)


def test_same_as_gguf_quantizer_away_from_ties_and_powers_of_two_but_for_the_sign_of_zero():
    values = (np.random.default_rng(7).standard_normal((32, 256)) * 0.02).astype(np.float32)
    ours, theirs = cast_to_mxfp4(values), gguf_quantize(values)
    assert not np.array_equal(ours, theirs)  # small negatives: code 8 here, 0 there
    np.testing.assert_array_equal(without_negative_zero_codes(ours), theirs)


def test_gguf_breaks_ties_toward_zero_not_to_even():
    ties = np.array([0.75, 1.75, 3.5, -0.75, -1.75, -3.5] + [4.0] * 26, np.float32)[None, :]
    ours, theirs = mxfp4_to_float32(cast_to_mxfp4(ties), 32), mxfp4_to_float32(gguf_quantize(ties), 32)
    np.testing.assert_array_equal(ours[0, :6], [1, 2, 4, -1, -2, -4])  # even code: the larger magnitude here
    np.testing.assert_array_equal(theirs[0, :6], [0.5, 1.5, 3, -0.5, -1.5, -3])  # first index: toward zero
    even_ties = np.array([0.25, 1.25, 2.5, 5.0] + [4.0] * 28, np.float32)[None, :]
    np.testing.assert_array_equal(cast_to_mxfp4(even_ties), gguf_quantize(even_ties))  # both round down here


def test_gguf_gives_positive_zero_code_for_negative_values_rounding_to_zero():
    values = np.array([-0.1, -0.0] + [4.0] * 30, np.float32)[None, :]
    assert cast_to_mxfp4(values)[0, 1] & 0x0F == 8 and cast_to_mxfp4(values)[0, 2] & 0x0F == 8
    assert gguf_quantize(values)[0, 1] & 0x0F == 0 and gguf_quantize(values)[0, 2] & 0x0F == 0
    ours, theirs = mxfp4_to_float32(cast_to_mxfp4(values), 32), mxfp4_to_float32(gguf_quantize(values), 32)
    np.testing.assert_array_equal(ours, theirs)


def test_gguf_exponent_rounds_up_just_below_a_power_of_two():
    values = np.full((1, 32), np.float32(8.0) * (1 - np.float32(2.0**-24)), np.float32)
    assert cast_to_mxfp4(values)[0, 0] == 127  # floor(log2(7.9999995)) - 2 = 0
    assert gguf_quantize(values)[0, 0] == 128  # float32 log2 rounds to 3.0


def test_gguf_does_not_clamp_tiny_blocks():
    values = np.full((1, 32), np.float32(2.0**-130), np.float32)
    assert cast_to_mxfp4(values)[0, 0] == 0  # clamped at E8M0's smallest scale
    with np.errstate(invalid="ignore"):
        assert gguf_quantize(values)[0, 0] != 0  # floor(log2) - 2 + 127 = -5 wraps in the uint8 cast


# --- the GEMM ---

# Every path multiplies the activations rounded to BF16 by the decoded weights, products exact in
# float32; the vector paths only add them in another order (and vdpbf16ps flushes subnormals). Per
# output: |isa - scalar| <= K * 2^-23 * sum_k |x_k w_k|, twice the bound of float32 recursive summation.
def summation_tolerance(K: int) -> float:
    return K * 2.0**-23


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def random_mxfp4(rng: np.random.Generator, N: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    weights = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    weights[:, :32] *= 300.0  # one block with a much larger scale than the rest
    blocks = cast_to_mxfp4(weights)
    return blocks, mxfp4_to_float32(blocks, K)


@pytest.mark.parametrize("isa", _native.supported_isas())
def test_gemm_decodes_every_exponent_byte_and_code_exactly(isa):
    """x = identity reads W back through the kernel's own decoding. AVX-512 and AMX flush subnormal
    products (vdpbf16ps, tdpbf16ps), so there bytes 0 and 1, whose weights are subnormal, are left out."""
    rng = np.random.default_rng(11)
    first_byte = 2 if isa in ("avx512", "amx") else 0
    exponent_bytes = np.arange(first_byte, 253, dtype=np.uint8)  # 253..255 hold infinite weights
    blocks = rng.integers(0, 256, size=(len(exponent_bytes), 2, 17), dtype=np.uint8)
    blocks[:, :, 0] = exponent_bytes[:, None]
    blocks = blocks.reshape(len(exponent_bytes), 34)
    _native.set_isa(isa)
    y = _native.matmul_mxfp4(np.eye(64, dtype=np.float32), blocks, 64)
    np.testing.assert_array_equal(y.T, mxfp4_to_float32(blocks, 64))


def test_scalar_gemm_matches_numpy():
    rng = np.random.default_rng(8)
    blocks, dense = random_mxfp4(rng, 37, 160)
    x = rng.standard_normal((5, 160)).astype(np.float32)
    _native.set_isa("scalar")
    rounded = round_to_bf16(x).astype(np.float64)
    assert not np.array_equal(rounded, x)
    expected = rounded @ dense.astype(np.float64).T
    bound = np.abs(rounded) @ np.abs(dense).astype(np.float64).T
    assert np.all(np.abs(_native.matmul_mxfp4(x, blocks, 160) - expected) <= summation_tolerance(160) / 2 * bound)


@pytest.mark.parametrize("isa", [isa for isa in _native.supported_isas() if isa != "scalar"])
def test_vector_gemm_within_tolerance_of_scalar(isa):
    rng = np.random.default_rng(9)
    N, K = 203, 320  # N not a multiple of any row tile
    blocks, dense = random_mxfp4(rng, N, K)
    x = rng.standard_normal((70, K)).astype(np.float32)  # M spans two chunks, several tiles, remainders
    x[3] *= 1e4
    bound = np.abs(x).astype(np.float64) @ np.abs(dense).astype(np.float64).T
    _native.set_isa("scalar")
    reference = _native.matmul_mxfp4(x, blocks, K)
    _native.set_isa(isa)
    assert np.all(np.abs(_native.matmul_mxfp4(x, blocks, K) - reference) <= summation_tolerance(K) * bound)


@pytest.mark.parametrize("isa", _native.supported_isas())
def test_gemm_is_batch_invariant(isa):
    """Bits of y[m, n] do not depend on M, the row's place in the batch, the n range or threads."""
    rng = np.random.default_rng(10)
    N, K = 131, 256
    blocks, _ = random_mxfp4(rng, N, K)
    x = rng.standard_normal((17, K)).astype(np.float32)
    _native.set_isa(isa)
    _native.set_num_threads(1)
    alone = np.concatenate([_native.matmul_mxfp4(x[m : m + 1], blocks, K) for m in range(17)])
    for threads in (1, 2, 3):  # 3: threads convert uneven slices of K, one only a 64-column slice
        _native.set_num_threads(threads)
        for M in range(1, 18):
            start = (M * 5) % (18 - M)  # a different place in the batch for each M
            y = _native.matmul_mxfp4(x[start : start + M], blocks, K)
            assert np.array_equal(y, alone[start : start + M]), f"{isa}: M={M}, {threads} threads"
        rows = _native.matmul_mxfp4(x, blocks[7:100], K)  # other row tiles over the same weights
        assert np.array_equal(rows, alone[:, 7:100]), f"{isa}: n range, {threads} threads"


def test_gemm_writes_into_out():
    rng = np.random.default_rng(13)
    blocks, _ = random_mxfp4(rng, 10, 64)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    out = np.full((3, 10), np.nan, np.float32)
    assert _native.matmul_mxfp4(x, blocks, 64, out=out) is out
    assert np.array_equal(out, _native.matmul_mxfp4(x, blocks, 64))
    with pytest.raises(ValueError, match=r"out must be .* shape \(3, 10\)"):
        _native.matmul_mxfp4(x, blocks, 64, out=np.zeros((3, 11), np.float32))


def test_gemm_refuses_bad_arguments():
    blocks = np.zeros((4, 34), np.uint8)
    with pytest.raises(ValueError, match=r"x \(2, 32\) is not \(M, K=64\)"):
        _native.matmul_mxfp4(np.zeros((2, 32), np.float32), blocks, 64)
    with pytest.raises(ValueError, match="do not hold K=96"):
        _native.matmul_mxfp4(np.zeros((2, 96), np.float32), blocks, 96)
    with pytest.raises(ValueError, match="2-D uint8"):
        _native.matmul_mxfp4(np.zeros((2, 64), np.float32), blocks.astype(np.int16), 64)
    with pytest.raises(ValueError, match="K=50"):
        _native.matmul_mxfp4(np.zeros((2, 50), np.float32), blocks, 50)


def test_recipe_casts_linear_weights_only():
    rng = np.random.default_rng(12)

    def bf16(shape: tuple[int, ...]) -> np.ndarray:
        return rng.integers(0x3C00, 0x3F00, size=shape, dtype=np.uint16)

    weights = {
        "token_embd.weight": bf16((10, 64)),
        "blk.0.attn_norm.weight": np.ones(64, np.float32),
        "blk.0.attn_q.weight": bf16((64, 64)),
        "blk.0.attn_q.bias": np.zeros(64, np.float32),
        "blk.0.ffn_down.weight": bf16((64, 128)),
        "blk.0.ffn_gate_exps.weight": bf16((4, 128, 64)),
        "blk.0.ffn_gate_inp.weight": np.ones((4, 64), np.float32),
        "output.weight": bf16((10, 64)),
    }
    cast = cast_linear_weights_to_mxfp4(weights)
    assert {name for name, array in cast.items() if array.dtype == np.uint8} == {
        "blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.0.ffn_gate_exps.weight", "output.weight"}
    assert cast["blk.0.ffn_gate_exps.weight"].shape == (4, 128, 34)
    np.testing.assert_array_equal(cast["blk.0.ffn_down.weight"], cast_to_mxfp4(weights["blk.0.ffn_down.weight"]))
    assert all(cast[name] is weights[name] for name in ("token_embd.weight", "blk.0.ffn_gate_inp.weight"))
    with pytest.raises(QuantizationError, match=r"blk\.0\.attn_k\.weight \(2, 48\): K=48"):
        cast_linear_weights_to_mxfp4({"blk.0.attn_k.weight": np.ones((2, 48), np.float32)})
