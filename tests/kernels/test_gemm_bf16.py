"""BF16 GEMM: the scalar reference against float64, each vector path against scalar, batch invariance."""

from __future__ import annotations

import numpy as np
import pytest

from mlspecqd import _native
from mlspecqd.engine.weight_layout import (
    CACHE_LINE_BYTES,
    block_columns_for,
    cache_aligned_empty,
    in_column_blocks,
    row_major,
)

UNIT_ROUNDOFF = 2.0**-24  # float32
ISAS = _native.supported_isas()
VECTOR_ISAS = [isa for isa in ISAS if isa != "scalar"]


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """Float32 -> BF16 bit patterns, rounding to nearest even (finite values only)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_float64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def summation_bound(K: int) -> float:
    """Worst-case relative error of a float32 sum of K exact products, relative to sum |x| |w|."""
    return K * UNIT_ROUNDOFF / (1 - K * UNIT_ROUNDOFF)


def random_problem(M: int, N: int, K: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = bf16_bits(rng.standard_normal((N, K)) * 0.05)
    return x, w


def matmul_with(isa: str, x: np.ndarray, w: np.ndarray, threads: int = 1) -> np.ndarray:
    _native.set_isa(isa)
    _native.set_num_threads(threads)
    return _native.matmul_bf16(x, w)


# K around the vector widths (16, 32) and tails of every length class; N not a multiple of any tile.
SHAPES = [(1, 1, 1), (1, 7, 5), (2, 3, 31), (3, 5, 32), (4, 9, 33), (5, 13, 63), (9, 65, 100), (17, 70, 257),
          (1, 130, 1536), (64, 33, 129)]


@pytest.mark.parametrize("M,N,K", SHAPES)
def test_scalar_matches_float64_of_the_rounded_operands(M: int, N: int, K: int) -> None:
    x, w = random_problem(M, N, K)
    x_rounded, w_float = bf16_to_float64(bf16_bits(x)), bf16_to_float64(w)
    expected = x_rounded @ w_float.T
    scale = np.abs(x_rounded) @ np.abs(w_float).T
    y = matmul_with("scalar", x, w)
    assert y.dtype == np.float32 and y.shape == (M, N)
    assert np.all(np.abs(y - expected) <= summation_bound(K) * scale)


@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_vector_path_matches_scalar(isa: str, M: int, N: int, K: int) -> None:
    x, w = random_problem(M, N, K, seed=1)
    scale = np.abs(bf16_to_float64(bf16_bits(x))) @ np.abs(bf16_to_float64(w)).T
    reference = matmul_with("scalar", x, w)
    y = matmul_with(isa, x, w, threads=2)
    # Both sums are within summation_bound of the exact value, so within twice that of each other.
    assert np.all(np.abs(y.astype(np.float64) - reference) <= 2 * summation_bound(K) * scale)


@pytest.mark.parametrize("isa", ISAS)
def test_rows_have_the_same_bits_in_any_batch(isa: str) -> None:
    # K = 2001 leaves a tail for both vector widths, and is long enough that row tiles of 9 or more
    # rows overflow L1 and run in K blocks, their partial sums parked between blocks.
    x, w = random_problem(70, 203, 2001, seed=2)
    alone = np.concatenate([matmul_with(isa, x[r : r + 1], w) for r in range(len(x))])
    for threads in (1, 2, 3):  # the threads also share out the conversion of x, by slices of K
        for M in [*range(1, 18), 31, 32, 64, 70]:
            for start in (0, 3):  # shifts every row into a different place of the row tiles
                rows = x[start : start + M]
                batch = matmul_with(isa, rows, w, threads)
                assert np.array_equal(batch, alone[start : start + len(rows)]), (threads, M, start)


@pytest.mark.parametrize("isa", ISAS)
def test_outputs_do_not_depend_on_the_weight_row_range(isa: str) -> None:
    x, w = random_problem(9, 301, 77, seed=3)
    full = matmul_with(isa, x, w, threads=2)
    for first in (1, 2, 5, 64):
        assert np.array_equal(matmul_with(isa, x, w[first:], threads=1), full[:, first:])


@pytest.mark.parametrize("isa", ISAS)
def test_weights_in_column_blocks_give_the_same_bits_as_row_major(isa: str) -> None:
    # K = 2048 in blocks of 512 (the activations of 9 or more rows then run a weight block at a time)
    # and of 64 (shorter than a 9-row tile would take); M covers single rows, one tile, several.
    x, w = random_problem(40, 203, 2048, seed=5)
    for block_columns in (512, 64):
        blocked = in_column_blocks(w, block_columns)
        for threads in (1, 2):
            for M in (1, 2, 9, 12, 13, 40):
                expected = matmul_with(isa, x[:M], w, threads)
                assert np.array_equal(matmul_with(isa, x[:M], blocked, threads), expected), (block_columns, threads, M)


@pytest.mark.parametrize("K,width", [(8960, 896), (4864, 608), (2048, 512), (1792, None), (1536, None), (11008, None)])
def test_block_width_is_the_widest_aligned_divisor_up_to_896(K: int, width: int | None) -> None:
    # 11008 = 32 * 344: its widest aligned divisor up to 896 is 256, under the 512 minimum.
    assert block_columns_for(K) == width


def test_column_blocks_round_trip_and_refuse_a_bad_width_or_shape() -> None:
    w = np.arange(6 * 96, dtype=np.uint16).reshape(6, 96)
    blocked = in_column_blocks(w, 32)
    assert blocked.shape == (3, 6, 32) and np.array_equal(blocked[1], w[:, 32:64])
    assert np.array_equal(row_major(blocked), w)
    assert in_column_blocks(w) is w  # K = 96 stays row-major
    with pytest.raises(ValueError, match="40 columns per block do not divide K=96"):
        in_column_blocks(w, 40)
    with pytest.raises(ValueError, match=r"expected a 2-D \(N, K\) matrix, got shape \(3, 6, 32\)"):
        in_column_blocks(blocked)


def test_column_blocks_start_on_a_cache_line() -> None:
    """NumPy aligns to 16 bytes only: of 12 arrays, an unaligned allocator would put most inside a line."""
    for N in range(1, 13):
        blocked = in_column_blocks(np.ones((N, 64), np.uint16), 32)
        assert blocked.ctypes.data % CACHE_LINE_BYTES == 0 and blocked.flags.c_contiguous and blocked.flags.writeable
    for shape, dtype in [((1,), np.float32), ((3, 5), np.uint16), ((2, 3, 7), np.float64)]:
        empty = cache_aligned_empty(shape, dtype)
        assert empty.shape == shape and empty.dtype == dtype and empty.ctypes.data % CACHE_LINE_BYTES == 0


def test_out_argument_is_written_in_place() -> None:
    x, w = random_problem(3, 10, 40)
    out = np.full((3, 10), np.nan, dtype=np.float32)
    result = _native.matmul_bf16(x, w, out=out)
    assert np.shares_memory(result, out)
    assert np.array_equal(out, _native.matmul_bf16(x, w))


@pytest.mark.parametrize(
    "x,w,out,message",
    [
        (np.zeros(8, np.float32), np.zeros((4, 8), np.uint16), None, "x must be 2-D"),
        (np.zeros((2, 8), np.float32), np.zeros(8, np.uint16), None, "w must be 2-D .* or 3-D"),
        (np.zeros((2, 8), np.float32), np.zeros((1, 2, 4, 8), np.uint16), None, "w must be 2-D .* or 3-D"),
        (np.zeros((2, 8), np.float32), np.zeros((4, 9), np.uint16), None, r"x has K=8 but w \(4, 9\) has K=9"),
        (np.zeros((2, 8), np.float32), np.zeros((3, 4, 2), np.uint16), None, r"x has K=8 but w \(3, 4, 2\) has K=6"),
        (np.zeros((2, 8), np.float32), np.zeros((4, 8), np.float32), None, "uint16"),
        (np.zeros((2, 8), np.float32), np.zeros((8, 4), np.uint16).T, None, "C-contiguous"),
        (np.zeros((2, 0), np.float32), np.zeros((4, 0), np.uint16), None, "w is empty"),
        (np.zeros((2, 8), np.float32), np.zeros((4, 8), np.uint16), np.zeros((2, 5), np.float32), r"shape \(2, 4\)"),
        (np.zeros((2, 8), np.float32), np.zeros((4, 8), np.uint16), np.zeros((2, 4), np.float64), "float32"),
    ],
)
def test_bad_shapes_are_refused(x: np.ndarray, w: np.ndarray, out: np.ndarray | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _native.matmul_bf16(x, w, out=out)


@pytest.mark.parametrize("isa", ISAS)
def test_stream_read_returns_the_wrapping_sum_of_the_words(isa: str) -> None:
    words = np.random.default_rng(4).integers(0, 2**64, size=100_003, dtype=np.uint64)
    _native.set_isa(isa)
    for threads in (1, 2):
        _native.set_num_threads(threads)
        assert _native.stream_read(words) == int(words.sum(dtype=np.uint64))


def test_stream_read_refuses_a_partial_word() -> None:
    with pytest.raises(ValueError, match="64-bit words"):
        _native.stream_read(np.zeros(7, np.uint8))
