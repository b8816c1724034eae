"""A plain NumPy forward pass (float64 unless told otherwise) of the decoders (llama, qwen2, qwen3, gemma3,
and with experts qwen2moe, qwen3moe and Mixtral-style llama): the reference the native decoder is tested against, and
the source of a dense model's FFN inputs for bench/moefy.py. Written for reading, not speed: no cache, the
whole sequence each call, one expert call per token and expert. Nothing in the runtime imports it.

Weights are the same arrays the native model gets (BF16 bit patterns for matrices, float32 vectors),
widened to float64 (or `dtype`). With `round_matmul_inputs=True` every matrix product first rounds its input to BF16,
as the native GEMM kernels may, so the remaining difference is float32 accumulation alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def bf16_bits_to_float64(bits: np.ndarray) -> np.ndarray:
    return bf16_bits_to_float32(bits).astype(np.float64)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest BF16 (ties to even), through float32 as the native code does."""
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.view(np.float32).astype(np.float64)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh approximation (PyTorch's approximate="tanh", Gemma's hidden_activation)."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def route(spec: Any, router: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's experts (T x n_experts_used, highest router logit first, ties to the lower index) and
    their weights: softmax probabilities over all experts, rescaled to sum to 1 if the model says so, then
    multiplied by the model's expert_weights_scale."""
    logits = h @ router.T
    experts = np.argsort(-logits, axis=-1, kind="stable")[:, : spec.n_experts_used]
    weights = np.take_along_axis(softmax(logits), experts, axis=-1)
    if spec.expert_weights_normalized:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return experts, weights * spec.expert_weights_scale


def routing_margin(spec: Any, router: np.ndarray, h: np.ndarray) -> float:
    """The smallest gap, over rows, between the last chosen and the first unchosen router logit: how far
    the routing is from a tie that rounding could break either way (infinite when every expert runs)."""
    if spec.n_experts_used == spec.n_experts:
        return float("inf")
    ranked = -np.sort(-(h @ router.T), axis=-1)
    return float((ranked[:, spec.n_experts_used - 1] - ranked[:, spec.n_experts_used]).min())


def is_sliding(spec: Any, layer: int) -> bool:
    """Gemma 3: every sliding_window_pattern-th layer attends globally, the others within the window."""
    return spec.sliding_window > 0 and (layer + 1) % spec.sliding_window_pattern != 0


def inverse_frequencies(spec: Any, tensors: Mapping[str, np.ndarray], sliding: bool = False) -> np.ndarray:
    """theta_i = base^(-2i / rope_dim), divided by the linear factor or by llama3's per-frequency
    factors (the tensor rope_freqs.weight). Sliding-window layers use their own base and no scaling."""
    i = np.arange(spec.rope_dim // 2, dtype=np.float64)
    theta = (spec.rope_base_sliding if sliding else spec.rope_base) ** (-2.0 * i / spec.rope_dim)
    if sliding:
        return theta
    if spec.rope_scaling.kind == "linear":
        return theta / spec.rope_scaling.factor
    if spec.rope_scaling.kind == "llama3":
        return theta / tensors["rope_freqs.weight"].astype(np.float64)
    return theta


def apply_rope(x: np.ndarray, positions: np.ndarray, theta: np.ndarray, style: str) -> np.ndarray:
    """Rotate pairs of each head (x: T x heads x head_dim) by position * theta_i."""
    pairs = len(theta)
    angle = positions[:, None, None] * theta[None, None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    out = x.copy()
    if style == "interleaved":
        first, second = x[..., 0 : 2 * pairs : 2], x[..., 1 : 2 * pairs : 2]
        out[..., 0 : 2 * pairs : 2] = first * cos - second * sin
        out[..., 1 : 2 * pairs : 2] = first * sin + second * cos
    else:
        first, second = x[..., :pairs], x[..., pairs : 2 * pairs]
        out[..., :pairs] = first * cos - second * sin
        out[..., pairs : 2 * pairs] = first * sin + second * cos
    return out


def causal_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, n_kv_heads: int, scale: float, window: int = 0
) -> np.ndarray:
    """q: T x heads x d; k, v: T x kv_heads x d. Query head h reads key/value head h // (heads / kv_heads).
    window > 0: position t attends to positions t - window + 1 .. t only."""
    T, n_heads, _ = q.shape
    group = n_heads // n_kv_heads
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) * scale
    query, key = np.arange(T)[:, None], np.arange(T)[None, :]
    hidden = (key > query) | ((query - key >= window) if window > 0 else False)
    scores[:, hidden] = -np.inf
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", weights, v)


def forward(
    spec: Any,
    tensors: Mapping[str, np.ndarray],
    tokens: Sequence[int],
    round_matmul_inputs: bool = False,
    ffn_inputs: list[np.ndarray] | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """Logits (T x vocab, `dtype`) of every position of `tokens`, starting at position 0. `ffn_inputs` (a
    list) receives each layer's normed FFN input h (T x d_model), which is also a MoE layer's router input."""

    def weight(name: str) -> np.ndarray:
        array = tensors[name]
        return (bf16_bits_to_float32(array) if array.dtype == np.uint16 else array).astype(dtype, copy=False)

    def product(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        return (round_to_bf16(x) if round_matmul_inputs else x) @ matrix.T

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return product(x, weight(name))

    def gated_mlp(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
        return product(activation(product(x, gate)) * product(x, up), down)

    def experts_block(h: np.ndarray, block: str) -> np.ndarray:
        """The weighted sum of each row's chosen experts, plus the shared expert under its sigmoid gate."""
        gate, up, down = (weight(block + f"ffn_{name}_exps.weight") for name in ("gate", "up", "down"))
        experts, weights = route(spec, weight(block + "ffn_gate_inp.weight"), h)
        out = np.zeros_like(h)
        for t in range(len(h)):
            for e, w in zip(experts[t], weights[t]):
                out[t] += w * gated_mlp(h[t : t + 1], gate[e], up[e], down[e])[0]
        if spec.shared_expert_d_ff:
            shared = gated_mlp(h, *(weight(block + f"ffn_{name}_shexp.weight") for name in ("gate", "up", "down")))
            out += sigmoid(h @ weight(block + "ffn_gate_inp_shexp.weight"))[:, None] * shared
        return out

    T = len(tokens)
    positions = np.arange(T, dtype=dtype)
    attention_scale = spec.attention_scale or 1.0 / np.sqrt(spec.head_dim)
    activation = ACTIVATIONS[spec.activation]
    x = weight("token_embd.weight")[np.asarray(tokens)] * spec.embedding_scale
    for layer in range(spec.n_layers):
        block = f"blk.{layer}."
        sliding = is_sliding(spec, layer)
        theta = inverse_frequencies(spec, tensors, sliding)
        h = rms_norm(x, weight(block + "attn_norm.weight"), spec.norm_eps)
        q, k, v = (linear(h, block + f"attn_{name}.weight") for name in "qkv")
        if spec.qkv_bias:
            q, k, v = (p + weight(block + f"attn_{name}.bias") for p, name in zip((q, k, v), "qkv"))
        q = q.reshape(T, spec.n_heads, spec.head_dim)
        k = k.reshape(T, spec.n_kv_heads, spec.head_dim)
        v = v.reshape(T, spec.n_kv_heads, spec.head_dim)
        if spec.qk_norm:
            q = rms_norm(q, weight(block + "attn_q_norm.weight"), spec.norm_eps)
            k = rms_norm(k, weight(block + "attn_k_norm.weight"), spec.norm_eps)
        q = apply_rope(q, positions, theta, spec.rope_style)
        k = apply_rope(k, positions, theta, spec.rope_style)
        window = spec.sliding_window if sliding else 0
        attended = causal_attention(q, k, v, spec.n_kv_heads, attention_scale, window)
        out = linear(attended.reshape(T, spec.n_heads * spec.head_dim), block + "attn_output.weight")
        if spec.post_norms:
            out = rms_norm(out, weight(block + "post_attention_norm.weight"), spec.norm_eps)
        x = x + out
        h = rms_norm(x, weight(block + "ffn_norm.weight"), spec.norm_eps)
        if ffn_inputs is not None:
            ffn_inputs.append(h)
        if spec.n_experts:
            out = experts_block(h, block)
        else:
            out = gated_mlp(h, *(weight(block + f"ffn_{name}.weight") for name in ("gate", "up", "down")))
        if spec.post_norms:
            out = rms_norm(out, weight(block + "post_ffw_norm.weight"), spec.norm_eps)
        x = x + out
    x = rms_norm(x, weight("output_norm.weight"), spec.norm_eps)
    return linear(x, "token_embd.weight" if spec.tied_output else "output.weight")
