"""The decoder's own kernels, causal attention and SiLU-multiply: every vector instruction set against
the scalar kernel, and the scalar kernel against float64."""

import numpy as np
import pytest

from mlspecqd import _native


@pytest.mark.parametrize("isa", [isa for isa in _native.supported_isas() if isa != "scalar"])
@pytest.mark.parametrize("shape", [(1, 4, 2, 16, 0), (7, 6, 3, 24, 5), (17, 8, 1, 64, 30), (3, 2, 2, 128, 200),
                                   (5, 6, 2, 40, 300)])
def test_attention_kernel_matches_scalar(isa, shape):
    T, heads, kv_heads, head_dim, first = shape
    rng = np.random.default_rng(T)
    q = rng.standard_normal((T, heads, head_dim)).astype(np.float32) * 2
    k = rng.standard_normal((kv_heads, first + T + 3, head_dim)).astype(np.float32)
    v = rng.standard_normal((kv_heads, first + T + 3, head_dim)).astype(np.float32)
    _native.set_isa("scalar")
    scalar = _native.causal_attention(q, k, v, first)
    _native.set_isa(isa)
    vector = _native.causal_attention(q, k, v, first)
    np.testing.assert_allclose(vector, scalar, rtol=1e-5, atol=1e-6)
    # and the scalar kernel against float64 attention
    positions = first + np.arange(T)
    group = heads // kv_heads
    for h in range(heads):
        keys, values = k[h // group].astype(np.float64), v[h // group].astype(np.float64)
        for t in range(T):
            scores = keys[: positions[t] + 1] @ q[t, h] / np.sqrt(head_dim)
            weights = np.exp(scores - scores.max())
            expected = weights @ values[: positions[t] + 1] / weights.sum()
            np.testing.assert_allclose(scalar[t, h], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", [isa for isa in _native.supported_isas() if isa != "scalar"])
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


@pytest.mark.parametrize("gate, up", [(np.zeros(3), np.zeros(4)), (np.zeros((2, 2)), np.zeros((2, 2)))])
def test_silu_multiply_refuses_mismatched_arrays(gate, up):
    with pytest.raises(ValueError, match="silu_multiply wants two 1-D arrays of one length"):
        _native.silu_multiply(gate, up)
