"""Tiny decoder specs (dense, and with experts) and random weights for the native decoder tests, and the
tolerances of the native logits against the NumPy reference (mlspecqd/engine/reference_model.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from mlspecqd.gguf import ModelSpec, RopeScaling


def tiny_spec(architecture: str = "llama", **overrides) -> ModelSpec:
    """A small spec of the architecture; "mixtral" is llama with experts, as Mixtral's GGUF files are."""
    if architecture == "mixtral":
        return tiny_spec("llama", **{**MOE_EXTRAS["mixtral"], **overrides})
    overrides = {**MOE_EXTRAS.get(architecture, {}), **overrides}
    spec = ModelSpec(
        architecture=architecture, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
        vocab_size=160, context_length=256, rope_base=10000.0, rope_dim=16,
        rope_style="interleaved" if architecture == "llama" else "neox", rope_scaling=RopeScaling(),
        norm_eps=1e-6, tied_output=False, qkv_bias=architecture in ("qwen2", "qwen2moe"),
        qk_norm=architecture in ("qwen3", "gemma3", "qwen3moe"),
    )
    spec = replace(spec, **{**(GEMMA3_EXTRAS if architecture == "gemma3" else {}), **overrides})
    if architecture == "gemma3" and "embedding_scale" not in overrides:
        spec = replace(spec, embedding_scale=math.sqrt(spec.d_model))
    return spec


# Experts as each family routes them (weights renormalised over the chosen ones, or not), 8 of them of
# which 2 or 3 run, so a batch leaves some idle and shares others.
MOE_EXTRAS = {
    "qwen2moe": {"n_experts": 8, "n_experts_used": 2, "expert_d_ff": 32, "shared_expert_d_ff": 64,
                 "expert_weights_normalized": False},
    "qwen3moe": {"n_experts": 8, "n_experts_used": 3, "expert_d_ff": 32, "expert_weights_normalized": True},
    "mixtral": {"n_experts": 8, "n_experts_used": 2, "expert_d_ff": 64, "d_ff": 64, "expert_weights_normalized": True},
}
MOE_ARCHITECTURES = tuple(MOE_EXTRAS)


# Gemma 3's own features, shaped as the 270M has them but small: every third layer global, the others
# within a window of 7 positions (shorter than the test sequences), each with its own rope base.
GEMMA3_EXTRAS = {
    "n_layers": 4,
    "tied_output": True,
    "activation": "gelu_tanh",
    "post_norms": True,
    "sliding_window": 7,
    "sliding_window_pattern": 3,
    "rope_base": 1000000.0,
    "rope_base_sliding": 10000.0,
}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def random_tensors(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights by GGUF name: matrices as BF16 bits scaled like a trained model's, norms near 1."""
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return bf16_bits(rng.standard_normal((rows, cols)) / np.sqrt(cols))

    def vector(n: int, centre: float, spread: float) -> np.ndarray:
        return (centre + spread * rng.standard_normal(n)).astype(np.float32)

    q_width, kv_width = spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    tensors = {
        "token_embd.weight": bf16_bits(rng.standard_normal((spec.vocab_size, spec.d_model))),
        "output_norm.weight": vector(spec.d_model, 1.0, 0.1),
    }
    if not spec.tied_output:
        tensors["output.weight"] = matrix(spec.vocab_size, spec.d_model)
    if spec.rope_scaling.kind == "llama3":
        tensors["rope_freqs.weight"] = np.linspace(1.0, 8.0, spec.rope_dim // 2).astype(np.float32)
    for layer in range(spec.n_layers):
        block = f"blk.{layer}."
        tensors[block + "attn_norm.weight"] = vector(spec.d_model, 1.0, 0.1)
        tensors[block + "attn_q.weight"] = matrix(q_width, spec.d_model)
        tensors[block + "attn_k.weight"] = matrix(kv_width, spec.d_model)
        tensors[block + "attn_v.weight"] = matrix(kv_width, spec.d_model)
        tensors[block + "attn_output.weight"] = matrix(spec.d_model, q_width)
        if spec.qkv_bias:
            tensors[block + "attn_q.bias"] = vector(q_width, 0.0, 0.5)
            tensors[block + "attn_k.bias"] = vector(kv_width, 0.0, 0.5)
            tensors[block + "attn_v.bias"] = vector(kv_width, 0.0, 0.5)
        if spec.qk_norm:
            tensors[block + "attn_q_norm.weight"] = vector(spec.head_dim, 1.0, 0.1)
            tensors[block + "attn_k_norm.weight"] = vector(spec.head_dim, 1.0, 0.1)
        tensors[block + "ffn_norm.weight"] = vector(spec.d_model, 1.0, 0.1)
        if spec.is_moe:
            tensors.update(random_experts(spec, layer, rng))
        else:
            tensors[block + "ffn_gate.weight"] = matrix(spec.d_ff, spec.d_model)
            tensors[block + "ffn_up.weight"] = matrix(spec.d_ff, spec.d_model)
            tensors[block + "ffn_down.weight"] = matrix(spec.d_model, spec.d_ff)
        if spec.post_norms:
            tensors[block + "post_attention_norm.weight"] = vector(spec.d_model, 1.0, 0.1)
            tensors[block + "post_ffw_norm.weight"] = vector(spec.d_model, 1.0, 0.1)
    return tensors


def random_experts(spec: ModelSpec, layer: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One layer's router (float32, logits of about unit spread), experts (BF16 bits, experts x N x K)
    and, if the spec has one, shared expert with its gate vector."""
    d, E, F = spec.d_model, spec.n_experts, spec.expert_d_ff
    block = f"blk.{layer}."

    def stack(rows: int, cols: int) -> np.ndarray:
        return bf16_bits(rng.standard_normal((E, rows, cols)) / np.sqrt(cols))

    tensors = {
        block + "ffn_gate_inp.weight": (rng.standard_normal((E, d)) / np.sqrt(d)).astype(np.float32),
        block + "ffn_gate_exps.weight": stack(F, d),
        block + "ffn_up_exps.weight": stack(F, d),
        block + "ffn_down_exps.weight": stack(d, F),
    }
    if spec.shared_expert_d_ff:
        S = spec.shared_expert_d_ff
        tensors[block + "ffn_gate_inp_shexp.weight"] = (rng.standard_normal(d) / np.sqrt(d)).astype(np.float32)
        tensors[block + "ffn_gate_shexp.weight"] = bf16_bits(rng.standard_normal((S, d)) / np.sqrt(d))
        tensors[block + "ffn_up_shexp.weight"] = bf16_bits(rng.standard_normal((S, d)) / np.sqrt(d))
        tensors[block + "ffn_down_shexp.weight"] = bf16_bits(rng.standard_normal((d, S)) / np.sqrt(S))
    return tensors


# Activations are float32. Against a float64 reference that rounds GEMM inputs as the kernel does,
# only float32 accumulation differs: about 2e-6 of the logits' spread when the kernel keeps its float32
# inputs. When it rounds them to BF16, a value whose float32 and float64 forms fall on either side of a
# BF16 rounding boundary flips by 2^-8, and the flip travels through the later layers (and, through
# attention, to later positions): up to 1.6e-2 of the spread on these models, hence the looser bound. A
# wiring mistake (rope pairing or position, mask, scale, bias, norm) moves the logits by order 1.
TOLERANCE_EXACT_INPUTS = 1e-4
TOLERANCE_BF16_INPUTS = 4e-2
