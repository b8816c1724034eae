"""The AMX kernel table: its GEMMs against the scalar reference, and the bits of a row in any batch (the
transposed tile product must keep the batch invariance the cascade's exactness rests on). The shared GEMM
tests (test_gemm_bf16.py, test_mxfp4.py) also run every supported table, this one included."""

from __future__ import annotations

import numpy as np
import pytest

from mlspecqd import _native
from mlspecqd.engine.model import Model
from mlspecqd.engine.quant import cast_to_mxfp4, mxfp4_to_float32
from mlspecqd.engine.weight_layout import in_column_blocks

pytestmark = pytest.mark.skipif(
    "amx" not in _native.supported_isas(),
    reason="no AMX here: the CPU lacks AMX-BF16 tiles, or the OS does not save or grant the tile state",
)

UNIT_ROUNDOFF = 2.0**-24


def bf16_bits(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_float64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def with_isa(isa: str, threads: int, product, *args) -> np.ndarray:
    _native.set_isa(isa)
    _native.set_num_threads(threads)
    return product(*args)


def test_amx_is_the_default_table_where_it_runs() -> None:
    assert _native.best_isa() == "amx"


# (M, N, K): tails of K (not a multiple of 32), N not a multiple of the 16-row tiles, M across the
# 16-row B tiles and the 64-row passes.
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 17, 31), (3, 40, 33), (16, 16, 32), (17, 70, 257), (64, 33, 96),
                                   (65, 130, 1536), (100, 20, 64)])
def test_bf16_matches_the_scalar_reference(M: int, N: int, K: int) -> None:
    rng = np.random.default_rng(M * 1000 + K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = bf16_bits(rng.standard_normal((N, K)) * 0.05)
    scale = np.abs(bf16_to_float64(bf16_bits(x))) @ np.abs(bf16_to_float64(w)).T
    reference = with_isa("scalar", 1, _native.matmul_bf16, x, w)
    y = with_isa("amx", 2, _native.matmul_bf16, x, w)
    bound = 2 * K * UNIT_ROUNDOFF / (1 - K * UNIT_ROUNDOFF)  # each sum within K u of exact
    assert np.all(np.abs(y.astype(np.float64) - reference) <= bound * scale)


@pytest.mark.parametrize("N,K", [(37, 160), (70, 1536)])
def test_mxfp4_matches_the_scalar_reference(N: int, K: int) -> None:
    rng = np.random.default_rng(N)
    weights = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    blocks = cast_to_mxfp4(weights)
    dense = mxfp4_to_float32(blocks, K).astype(np.float64)
    x = rng.standard_normal((20, K)).astype(np.float32)
    bound = np.abs(x).astype(np.float64) @ np.abs(dense).T * K * 2.0**-23
    reference = with_isa("scalar", 1, _native.matmul_mxfp4, x, blocks, K)
    assert np.all(np.abs(with_isa("amx", 2, _native.matmul_mxfp4, x, blocks, K) - reference) <= bound)


def test_bf16_row_has_the_same_bits_at_every_row_count_and_thread_count() -> None:
    # The 1.5B's two K layouts: 1536 row-major and 8960 in column blocks of 896.
    rng = np.random.default_rng(1)
    for K, block_columns in ((1536, None), (8960, 896)):
        x = rng.standard_normal((70, K)).astype(np.float32)
        w = bf16_bits(rng.standard_normal((96, K)) * 0.05)
        w = in_column_blocks(w, block_columns) if block_columns else w
        alone = np.concatenate([with_isa("amx", 1, _native.matmul_bf16, x[m : m + 1], w) for m in range(70)])
        for threads in (1, 2):
            for M in range(1, 71):
                start = (7 * M) % (71 - M)
                y = with_isa("amx", threads, _native.matmul_bf16, x[start : start + M], w)
                assert np.array_equal(y, alone[start : start + M]), (K, threads, M, start)


def test_mxfp4_row_has_the_same_bits_at_every_row_count_and_thread_count() -> None:
    rng = np.random.default_rng(2)
    K = 1536
    blocks = cast_to_mxfp4((rng.standard_normal((83, K)) * 0.05).astype(np.float32))
    x = rng.standard_normal((70, K)).astype(np.float32)
    alone = np.concatenate([with_isa("amx", 1, _native.matmul_mxfp4, x[m : m + 1], blocks, K) for m in range(70)])
    for threads in (1, 2):
        for M in range(1, 71):
            start = (5 * M) % (71 - M)
            y = with_isa("amx", threads, _native.matmul_mxfp4, x[start : start + M], blocks, K)
            assert np.array_equal(y, alone[start : start + M]), (threads, M, start)


def test_non_finite_rows_do_not_reach_the_other_rows_of_their_tile() -> None:
    """A C tile's columns are activation rows; a row's infinities and NaNs stay in its own column."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 64)).astype(np.float32)
    w = bf16_bits(rng.standard_normal((32, 64)) * 0.05)
    alone = with_isa("amx", 1, _native.matmul_bf16, x, w)
    x[[0, 5, 19], [3, 40, 63]] = [np.inf, np.nan, -np.inf]
    y = with_isa("amx", 1, _native.matmul_bf16, x, w)
    finite = np.ones(20, bool)
    finite[[0, 5, 19]] = False
    assert np.array_equal(y[finite], alone[finite])
    assert not np.isfinite(y[~finite]).any()


@pytest.mark.parametrize("precision", ["bf16", "mxfp4"])
def test_real_model_verification_rows_equal_decoding_bits(qwen_small_path, precision: str) -> None:
    """Qwen2.5-Coder-0.5B on the amx table: a 9-row forward (a verification) gives each position the bits
    of decoding it alone, one row at a time."""
    _native.set_isa("amx")
    tokens = np.random.default_rng(4).integers(100, 20000, 40)
    model = Model.load(qwen_small_path, precision=precision, context_length=64)
    try:
        model.forward(tokens[:31], 0)
        batch = model.forward(tokens[31:], 31, all_logits=True)
        alone = np.concatenate([model.forward(tokens[p : p + 1], p) for p in range(31, 40)])
    finally:
        model.close()
    assert np.array_equal(batch, alone)
