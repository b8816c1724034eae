"""Native dequantization equals gguf-py's NumPy reference bit for bit, for every supported type."""

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as reference_dequantize
from gguf.quants import quantize as reference_quantize

from mlspecqd import _native, hub
from mlspecqd.gguf import DEQUANTIZABLE_TYPES, open_gguf

TYPES = sorted(DEQUANTIZABLE_TYPES)
N_ELEMENTS = 256 * 256  # whole blocks of every type, and several thread slices


def reference_f32(raw: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    with np.errstate(all="ignore"):  # random scales include inf and NaN
        return reference_dequantize(raw.reshape(1, -1), ggml_type).reshape(-1)


def reference_bf16(values: np.ndarray) -> np.ndarray:
    return reference_quantize(values.reshape(1, -1), GGMLQuantizationType.BF16).view(np.uint16).reshape(-1)


def random_raw(ggml_type: GGMLQuantizationType, n_elements: int, seed: int) -> np.ndarray:
    """Uniformly random bytes: every scale bit pattern (subnormal, inf, NaN) shows up."""
    block_elements, block_bytes = GGML_QUANT_SIZES[ggml_type]
    return np.random.default_rng(seed).integers(0, 256, size=n_elements // block_elements * block_bytes, dtype=np.uint8)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_the_real_models_types_and_the_briefs_are_supported():
    names = {t.name for t in DEQUANTIZABLE_TYPES}
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q5_K", "Q6_K", "MXFP4"} <= names


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_f32_equals_reference_on_random_blocks(ggml_type):
    raw = random_raw(ggml_type, N_ELEMENTS, seed=int(ggml_type))
    got = _native.dequantize(raw, int(ggml_type), N_ELEMENTS, False)
    assert got.dtype == np.float32
    assert same_bits(got, reference_f32(raw, ggml_type))


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_bf16_is_the_float32_rounded_to_nearest_even(ggml_type):
    raw = random_raw(ggml_type, N_ELEMENTS, seed=100 + int(ggml_type))
    got = _native.dequantize(raw, int(ggml_type), N_ELEMENTS, True)
    assert got.dtype == np.uint16
    assert same_bits(got, reference_bf16(reference_f32(raw, ggml_type)))


@pytest.mark.parametrize("to_bf16", [False, True])
def test_output_starts_on_a_cache_line(to_bf16):
    """The arrays become model weights, which the GEMM reads fastest from whole cache lines."""
    for n_blocks in range(1, 9):
        raw = np.zeros(n_blocks * 32 * 4, np.uint8)
        got = _native.dequantize(raw, int(GGMLQuantizationType.F32), n_blocks * 32, to_bf16)
        assert got.ctypes.data % 64 == 0 and got.flags.c_contiguous and got.flags.writeable
        assert got.shape == (n_blocks * 32,) and not got.any()


@pytest.mark.parametrize("ggml_type", [GGMLQuantizationType.F16, GGMLQuantizationType.BF16], ids=lambda t: t.name)
def test_every_16_bit_pattern(ggml_type):
    raw = np.arange(1 << 16, dtype=np.uint16).view(np.uint8)
    expected = reference_f32(raw, ggml_type)
    assert same_bits(_native.dequantize(raw, int(ggml_type), 1 << 16, False), expected)
    assert same_bits(_native.dequantize(raw, int(ggml_type), 1 << 16, True), reference_bf16(expected))


def test_every_mxfp4_exponent_and_code():
    blocks = np.zeros((256, 17), dtype=np.uint8)
    blocks[:, 0] = np.arange(256)
    blocks[:, 1:] = np.arange(16, dtype=np.uint8) * 17  # both nibbles hold every code
    raw = blocks.reshape(-1)
    got = _native.dequantize(raw, int(GGMLQuantizationType.MXFP4), 256 * 32, False)
    assert same_bits(got, reference_f32(raw, GGMLQuantizationType.MXFP4))


@pytest.mark.parametrize("ggml_type", [Q.Q4_K, Q.Q8_0, Q.F16], ids=lambda t: t.name)
def test_thread_count_does_not_change_the_bits(ggml_type):
    raw = random_raw(ggml_type, 4 * N_ELEMENTS, seed=7)
    threads = _native.num_threads()
    try:
        _native.set_num_threads(1)
        one = _native.dequantize(raw, int(ggml_type), 4 * N_ELEMENTS, True)
        _native.set_num_threads(3)
        three = _native.dequantize(raw, int(ggml_type), 4 * N_ELEMENTS, True)
    finally:
        _native.set_num_threads(threads)
    assert same_bits(one, three)


def test_unsupported_type_refused():
    with pytest.raises(ValueError, match="ggml type 10 cannot be dequantized"):
        _native.dequantize(np.zeros(84, np.uint8), int(GGMLQuantizationType.Q2_K), 256, False)


def test_byte_count_must_match_element_count():
    with pytest.raises(ValueError, match="take 34 bytes, got 33"):
        _native.dequantize(np.zeros(33, np.uint8), int(GGMLQuantizationType.Q8_0), 32, False)


def test_element_count_must_be_whole_blocks():
    with pytest.raises(ValueError, match="not a whole number of blocks of 32"):
        _native.dequantize(np.zeros(34, np.uint8), int(GGMLQuantizationType.Q8_0), 31, False)


REAL_MODELS = [path for path in map(hub.cached_path, hub.NAMED_MODELS) if path is not None]


@pytest.mark.real_model
@pytest.mark.skipif(not REAL_MODELS, reason="real GGUF checkpoints are not cached")
def test_real_tensors_of_every_type_equal_reference():
    checked = set()
    for path in REAL_MODELS:
        with open_gguf(path) as model:
            smallest = {}
            for info in model.tensors.values():
                if info.ggml_type not in smallest or info.n_elements < smallest[info.ggml_type].n_elements:
                    smallest[info.ggml_type] = info
            for ggml_type, info in smallest.items():
                expected = reference_f32(info.raw, ggml_type).reshape(info.shape)
                assert same_bits(model.tensor_f32(info.name), expected), (path.name, info.name)
                expected_bits = reference_bf16(expected).reshape(info.shape)
                assert same_bits(model.tensor_bf16(info.name), expected_bits), (path.name, info.name)
                checked.add(ggml_type.name)
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "Q4_1", "F32"} <= checked
