"""A plain NumPy float64 forward pass of the dense decoders (llama, qwen2, qwen3): the reference the
native decoder is tested against. Written for reading, not speed: no cache, the whole sequence each call.

Weights are the same arrays the native model gets (BF16 bit patterns for matrices, float32 vectors),
widened to float64. With `round_matmul_inputs=True` every matrix product first rounds its input to BF16,
as the native GEMM kernels may, so the remaining difference is float32 accumulation alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def bf16_bits_to_float64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest BF16 (ties to even), through float32 as the native code does."""
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.view(np.float32).astype(np.float64)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def inverse_frequencies(spec: Any, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """theta_i = base^(-2i / rope_dim), divided by the linear factor or by llama3's per-frequency
    factors (the tensor rope_freqs.weight)."""
    i = np.arange(spec.rope_dim // 2, dtype=np.float64)
    theta = spec.rope_base ** (-2.0 * i / spec.rope_dim)
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


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_kv_heads: int, scale: float) -> np.ndarray:
    """q: T x heads x d; k, v: T x kv_heads x d. Query head h reads key/value head h // (heads / kv_heads)."""
    T, n_heads, _ = q.shape
    group = n_heads // n_kv_heads
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) * scale
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    scores[:, future] = -np.inf
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", weights, v)


def forward(
    spec: Any, tensors: Mapping[str, np.ndarray], tokens: Sequence[int], round_matmul_inputs: bool = False
) -> np.ndarray:
    """Logits (T x vocab, float64) of every position of `tokens`, starting at position 0."""

    def weight(name: str) -> np.ndarray:
        array = tensors[name]
        return bf16_bits_to_float64(array) if array.dtype == np.uint16 else array.astype(np.float64)

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return (round_to_bf16(x) if round_matmul_inputs else x) @ weight(name).T

    T = len(tokens)
    positions = np.arange(T, dtype=np.float64)
    theta = inverse_frequencies(spec, tensors)
    attention_scale = spec.attention_scale or 1.0 / np.sqrt(spec.head_dim)
    x = weight("token_embd.weight")[np.asarray(tokens)]
    for layer in range(spec.n_layers):
        block = f"blk.{layer}."
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
        attended = causal_attention(q, k, v, spec.n_kv_heads, attention_scale).reshape(T, spec.n_heads * spec.head_dim)
        x = x + linear(attended, block + "attn_output.weight")
        h = rms_norm(x, weight(block + "ffn_norm.weight"), spec.norm_eps)
        x = x + linear(silu(linear(h, block + "ffn_gate.weight")) * linear(h, block + "ffn_up.weight"),
                       block + "ffn_down.weight")
    x = rms_norm(x, weight("output_norm.weight"), spec.norm_eps)
    return linear(x, "token_embd.weight" if spec.tied_output else "output.weight")
