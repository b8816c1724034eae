"""The decoder's own kernels, causal attention (global and sliding-window) and the gated activations
(SiLU and GELU-tanh): every vector instruction set against the scalar kernel, the scalar kernel against
float64, and attention's batch invariance (equality) on every instruction set."""

import numpy as np
import pytest

from mlspecqd import _native

VECTOR_ISAS = [isa for isa in _native.supported_isas() if isa != "scalar"]

# (T, heads, kv_heads, head_dim, first position, window); window 0 is global attention. The windows
# start inside a key tile, on a tile or block edge (16, 32), cover one key, or reach past position 0.
ATTENTION_SHAPES = [
    (1, 4, 2, 16, 0, 0), (7, 6, 3, 24, 5, 0), (17, 8, 1, 64, 30, 0), (3, 2, 2, 128, 200, 0), (5, 6, 2, 40, 300, 0),
    (7, 6, 3, 24, 5, 4), (17, 8, 1, 64, 30, 7), (3, 2, 2, 128, 200, 33), (5, 6, 2, 40, 300, 32),
    (20, 4, 1, 256, 90, 16), (9, 4, 2, 32, 100, 1), (6, 4, 2, 32, 3, 50),
]


def random_attention(shape):
    T, heads, kv_heads, head_dim, first, window = shape
    rng = np.random.default_rng(T + window)
    q = rng.standard_normal((T, heads, head_dim)).astype(np.float32) * 2
    k = rng.standard_normal((kv_heads, first + T + 3, head_dim)).astype(np.float32)
    v = rng.standard_normal((kv_heads, first + T + 3, head_dim)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
def test_attention_kernel_matches_scalar(isa, shape):
    T, heads, kv_heads, head_dim, first, window = shape
    q, k, v = random_attention(shape)
    _native.set_isa("scalar")
    scalar = _native.causal_attention(q, k, v, first, window)
    _native.set_isa(isa)
    vector = _native.causal_attention(q, k, v, first, window)
    np.testing.assert_allclose(vector, scalar, rtol=1e-5, atol=1e-6)
    # and the scalar kernel against float64 attention over each row's window
    positions = first + np.arange(T)
    group = heads // kv_heads
    for h in range(heads):
        keys, values = k[h // group].astype(np.float64), v[h // group].astype(np.float64)
        for t in range(T):
            visible = slice(max(0, positions[t] + 1 - window) if window else 0, positions[t] + 1)
            scores = keys[visible] @ q[t, h] / np.sqrt(head_dim)
            weights = np.exp(scores - scores.max())
            expected = weights @ values[visible] / weights.sum()
            np.testing.assert_allclose(scalar[t, h], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", _native.supported_isas())
@pytest.mark.parametrize("window", [0, 5, 16, 40])
def test_attention_kernel_is_batch_invariant(isa, window):
    """A row's output is the same bits alone (T = 1) as in any batch of rows after any prefix: the
    softmax and value sums start at the row's own first key, wherever the batch starts."""
    _native.set_isa(isa)
    shape = (40, 6, 2, 32, 0, window)
    q, k, v = random_attention(shape)
    alone = np.concatenate([_native.causal_attention(q[t : t + 1], k, v, t, window) for t in range(len(q))])
    for first in (0, 3, 17, 33):
        for T in (1, 2, 7, 16, len(q) - first):
            batch = _native.causal_attention(q[first : first + T], k, v, first, window)
            assert np.array_equal(batch, alone[first : first + T]), f"first {first}, T {T}"


def test_attention_kernel_refuses_a_negative_window():
    q, k, v = random_attention((2, 2, 1, 16, 0, 0))
    with pytest.raises(ValueError, match="window = -1 is negative"):
        _native.causal_attention(q, k, v, 0, -1)


@pytest.mark.parametrize("isa", VECTOR_ISAS)
def test_silu_multiply_kernel_matches_scalar(isa):
    """Every length from 0 to 40 (vector tails), and gates far into both tails of the exponential."""
    rng = np.random.default_rng(11)
    for n in range(41):
        gate = (rng.standard_normal(n) * 6).astype(np.float32)
        gate[: n // 10] = [-200.0, 200.0, -90.0, 90.0][: n // 10]
        up = rng.standard_normal(n).astype(np.float32)
        _native.set_isa("scalar")
        scalar = _native.silu_multiply(gate, up)
        _native.set_isa(isa)
        vector = _native.silu_multiply(gate, up)
        np.testing.assert_allclose(vector, scalar, rtol=2e-6, atol=1e-30)
        exact = gate.astype(np.float64) / (1 + np.exp(-gate.astype(np.float64))) * up
        np.testing.assert_allclose(scalar, exact, rtol=1e-6, atol=1e-30)


def gelu_tanh_float64(x: np.ndarray) -> np.ndarray:
    """GELU's tanh form in float64, written as the logistic 0.5 (1 + tanh(y)) = 1 / (1 + exp(-2y)) so that
    large negative inputs lose nothing to cancellation."""
    x = x.astype(np.float64)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-2.0 * np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("isa", VECTOR_ISAS)
def test_gelu_tanh_multiply_kernel_matches_scalar(isa):
    """Every length from 0 to 40 (vector tails), gates far into both tails, and the textbook tanh form."""
    rng = np.random.default_rng(12)
    for n in range(41):
        gate = (rng.standard_normal(n) * 4).astype(np.float32)
        gate[: n // 10] = [-200.0, 200.0, -12.0, 30.0][: n // 10]
        up = rng.standard_normal(n).astype(np.float32)
        _native.set_isa("scalar")
        scalar = _native.gelu_tanh_multiply(gate, up)
        _native.set_isa(isa)
        vector = _native.gelu_tanh_multiply(gate, up)
        np.testing.assert_allclose(vector, scalar, rtol=2e-6, atol=1e-30)
        # float32 rounding of the cubic inside exp's argument (|argument| up to about 88) dominates
        np.testing.assert_allclose(scalar, gelu_tanh_float64(gate) * up, rtol=3e-5, atol=1e-30)
    x = np.linspace(-3, 3, 61)
    textbook = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(gelu_tanh_float64(x), textbook, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kernel", ["silu_multiply", "gelu_tanh_multiply"])
@pytest.mark.parametrize("gate, up", [(np.zeros(3), np.zeros(4)), (np.zeros((2, 2)), np.zeros((2, 2)))])
def test_activation_kernels_refuse_mismatched_arrays(kernel, gate, up):
    with pytest.raises(ValueError, match=f"{kernel} wants two 1-D arrays of one length"):
        getattr(_native, kernel)(gate, up)
