"""The hyper-parameters of a GGUF model (ModelSpec), read from its metadata and checked against the
shapes of its tensors, so the decoder can trust every size it is given."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlspecqd.gguf.format import GGUFError, TensorInfo

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "qwen2moe", "qwen3moe")
_MOE_ARCHITECTURES = ("qwen2moe", "qwen3moe")
# How the rotary pairs are laid out: llama's GGUF weights are permuted for adjacent pairs (2i, 2i+1);
# the others rotate the halves (i, i + rope_dim / 2).
_ROPE_STYLES = {
    "llama": "interleaved",
    "qwen2": "neox",
    "qwen3": "neox",
    "gemma3": "neox",
    "qwen2moe": "neox",
    "qwen3moe": "neox",
}
# Whether the top-k routing weights are renormalized to sum to 1 (as llama.cpp does per family) when
# the file has no {arch}.expert_weights_norm key.
_NORMALIZED_EXPERT_WEIGHTS = {"llama": True, "qwen2moe": False, "qwen3moe": True}
# Gemma 3: every sixth layer attends globally, the others within the sliding window with their own rope base.
_GEMMA3_SLIDING_WINDOW_PATTERN = 6
_GEMMA3_ROPE_BASE_SLIDING = 10000.0


@dataclass(frozen=True)
class RopeScaling:
    """Rotary position scaling. kind "llama3" means: divide rotary frequency i by rope_freqs.weight[i]
    (that tensor holds llama3's per-frequency factors); factor and friends are informative then."""

    kind: str = "none"  # "none" | "linear" | "yarn" | "llama3"
    factor: float = 1.0
    original_context_length: int = 0  # 0: not given
    low_freq_factor: float = 0.0  # llama3 only, when the file states it
    high_freq_factor: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    """What the decoder needs to know about a model; tensor names are GGUF's (see mlspecqd.gguf)."""

    architecture: str  # general.architecture
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int  # dense feed-forward width (0 when a MoE file does not state one)
    vocab_size: int  # rows of the output matrix: the width of the logits
    context_length: int  # trained context
    rope_base: float
    rope_dim: int  # leading dimensions of each head that are rotated
    rope_style: str  # "interleaved" (pairs 2i, 2i+1) or "neox" (pairs i, i + rope_dim / 2)
    rope_scaling: RopeScaling
    norm_eps: float  # RMSNorm epsilon
    tied_output: bool  # no output.weight: the LM head is token_embd.weight
    qkv_bias: bool  # blk.N.attn_{q,k,v}.bias
    qk_norm: bool  # blk.N.attn_{q,k}_norm.weight: RMSNorm over head_dim of each query / key head
    n_experts: int = 0
    n_experts_used: int = 0
    expert_d_ff: int = 0
    shared_expert_d_ff: int = 0  # qwen2moe: ffn_*_shexp, gated by sigmoid(ffn_gate_inp_shexp . x)
    expert_weights_normalized: bool = False  # renormalize the top-k routing weights to sum to 1
    expert_weights_scale: float = 1.0  # then multiply them by this ({arch}.expert_weights_scale, as llama.cpp)
    activation: str = "silu"  # gated FFN activation: "silu" or "gelu_tanh" (gemma3)
    attention_scale: float = 0.0  # multiplies q.k; 1 / sqrt(head_dim) unless the model says otherwise
    embedding_scale: float = 1.0  # token embeddings are multiplied by it (gemma3: sqrt(d_model))
    post_norms: bool = False  # gemma3: post_attention_norm and post_ffw_norm after each sub-block
    # Gemma 3 sliding-window attention: layer i attends to the last `sliding_window` positions unless
    # (i + 1) % sliding_window_pattern == 0; sliding layers use rope_base_sliding and no rope scaling.
    sliding_window: int = 0
    sliding_window_pattern: int = 0
    rope_base_sliding: float = 0.0

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0


class _Metadata:
    """Typed access to `{architecture}.*` keys, failing with a GGUFError that names the key."""

    def __init__(self, path: Path, metadata: Mapping[str, Any], architecture: str) -> None:
        self.path = path
        self.metadata = metadata
        self.architecture = architecture

    def key(self, suffix: str) -> str:
        return f"{self.architecture}.{suffix}"

    def has(self, suffix: str) -> bool:
        return self.key(suffix) in self.metadata

    def _get(self, suffix: str, default: Any) -> Any:
        key = self.key(suffix)
        if key in self.metadata:
            return self.metadata[key]
        if default is None:
            raise GGUFError(self.path, key, "required key is missing")
        return default

    def integer(self, suffix: str, default: int | None = None, minimum: int = 1) -> int:
        value = self._get(suffix, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise GGUFError(self.path, self.key(suffix), f"expected an integer, got {value!r}")
        if value < minimum:
            raise GGUFError(self.path, self.key(suffix), f"must be at least {minimum}, got {value}")
        return value

    def number(self, suffix: str, default: float | None = None) -> float:
        value = self._get(suffix, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GGUFError(self.path, self.key(suffix), f"expected a finite number, got {value!r}")
        return float(value)

    def positive_number(self, suffix: str, default: float | None = None) -> float:
        value = self.number(suffix, default)
        if value <= 0:
            raise GGUFError(self.path, self.key(suffix), f"must be positive, got {value}")
        return value

    def flag(self, suffix: str, default: bool) -> bool:
        value = self._get(suffix, default)
        if not isinstance(value, bool):
            raise GGUFError(self.path, self.key(suffix), f"expected a boolean, got {value!r}")
        return value

    def text(self, suffix: str, default: str) -> str:
        value = self._get(suffix, default)
        if not isinstance(value, str):
            raise GGUFError(self.path, self.key(suffix), f"expected a string, got {value!r}")
        return value


def read_model_spec(path: Path, metadata: Mapping[str, Any], tensors: Mapping[str, TensorInfo]) -> ModelSpec:
    """The ModelSpec of a GGUF model; a GGUFError when the model is not one this package runs."""
    architecture = metadata.get("general.architecture")
    if architecture is None:
        raise GGUFError(path, "general.architecture", "required key is missing")
    if architecture not in ARCHITECTURES:
        problem = f"unsupported architecture {architecture!r} (supported: {', '.join(ARCHITECTURES)})"
        raise GGUFError(path, "general.architecture", problem)
    keys = _Metadata(path, metadata, architecture)

    n_layers = keys.integer("block_count")
    if n_layers > len(tensors):  # checked before anything loops over the layers
        raise GGUFError(path, keys.key("block_count"), f"{n_layers} layers but only {len(tensors)} tensors")
    d_model = keys.integer("embedding_length")
    n_heads = keys.integer("attention.head_count")
    n_kv_heads = keys.integer("attention.head_count_kv", default=n_heads)
    if n_heads % n_kv_heads:
        problem = f"{n_kv_heads} does not divide the {n_heads} query heads"
        raise GGUFError(path, keys.key("attention.head_count_kv"), problem)
    head_dim = keys.integer("attention.key_length", default=d_model // n_heads)
    if keys.has("attention.value_length") and keys.integer("attention.value_length") != head_dim:
        problem = f"differs from the key length {head_dim}: not supported"
        raise GGUFError(path, keys.key("attention.value_length"), problem)
    rope_dim = keys.integer("rope.dimension_count", default=head_dim, minimum=2)
    if rope_dim > head_dim or rope_dim % 2:
        problem = f"{rope_dim} must be even and at most head_dim {head_dim}"
        raise GGUFError(path, keys.key("rope.dimension_count"), problem)

    n_experts = keys.integer("expert_count", default=0, minimum=0)
    if architecture in _MOE_ARCHITECTURES and n_experts == 0:
        raise GGUFError(path, keys.key("expert_count"), f"a {architecture} model needs experts")
    if n_experts and architecture not in _NORMALIZED_EXPERT_WEIGHTS:
        raise GGUFError(path, keys.key("expert_count"), f"experts in a {architecture} model are not supported")
    n_experts_used = expert_d_ff = shared_expert_d_ff = 0
    if n_experts:
        n_experts_used = keys.integer("expert_used_count")
        if n_experts_used > n_experts:
            problem = f"{n_experts_used} is more than the {n_experts} experts"
            raise GGUFError(path, keys.key("expert_used_count"), problem)
        # Mixtral-style llama files give the expert width as feed_forward_length.
        expert_d_ff = keys.integer(
            "expert_feed_forward_length" if keys.has("expert_feed_forward_length") else "feed_forward_length"
        )
        shared_up = tensors.get("blk.0.ffn_up_shexp.weight")
        if keys.has("expert_shared_feed_forward_length") or shared_up is not None:
            inferred = shared_up.shape[0] if shared_up is not None and len(shared_up.shape) == 2 else None
            shared_expert_d_ff = keys.integer("expert_shared_feed_forward_length", default=inferred)
        if architecture == "qwen2moe" and not shared_expert_d_ff:
            raise GGUFError(path, "tensor blk.0.ffn_up_shexp.weight", "missing: qwen2moe has a shared expert")
    d_ff = keys.integer("feed_forward_length", default=0 if n_experts else None, minimum=0 if n_experts else 1)

    token_embd = tensors.get("token_embd.weight")
    if token_embd is None or len(token_embd.shape) != 2:
        raise GGUFError(path, "tensor token_embd.weight", "missing or not 2-D")
    vocab_size = token_embd.shape[0]
    if keys.has("vocab_size") and keys.integer("vocab_size") != vocab_size:
        problem = f"{keys.integer('vocab_size')} differs from the {vocab_size} rows of token_embd.weight"
        raise GGUFError(path, keys.key("vocab_size"), problem)
    tokens = metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) > vocab_size:
        problem = f"{len(tokens)} tokens but the embedding has only {vocab_size} rows"
        raise GGUFError(path, "tokenizer.ggml.tokens", problem)

    _refuse_softcapping(keys)
    is_gemma3 = architecture == "gemma3"
    spec = ModelSpec(
        architecture=architecture,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        d_ff=d_ff,
        vocab_size=vocab_size,
        context_length=keys.integer("context_length"),
        rope_base=keys.positive_number("rope.freq_base", default=10000.0),
        rope_dim=rope_dim,
        rope_style=_ROPE_STYLES[architecture],
        rope_scaling=_rope_scaling(keys, tensors),
        norm_eps=keys.positive_number("attention.layer_norm_rms_epsilon"),
        tied_output="output.weight" not in tensors,
        qkv_bias=_present_in_every_layer(path, tensors, n_layers, ("attn_q.bias", "attn_k.bias", "attn_v.bias")),
        qk_norm=_present_in_every_layer(path, tensors, n_layers, ("attn_q_norm.weight", "attn_k_norm.weight")),
        n_experts=n_experts,
        n_experts_used=n_experts_used,
        expert_d_ff=expert_d_ff,
        shared_expert_d_ff=shared_expert_d_ff,
        expert_weights_normalized=n_experts > 0
        and keys.flag("expert_weights_norm", default=_NORMALIZED_EXPERT_WEIGHTS[architecture]),
        expert_weights_scale=keys.positive_number("expert_weights_scale", default=1.0) if n_experts else 1.0,
        activation="gelu_tanh" if is_gemma3 else "silu",
        attention_scale=keys.positive_number(
            "attention.scale", default=_default_attention_scale(architecture, n_layers, d_model, n_heads, head_dim)
        ),
        embedding_scale=math.sqrt(d_model) if is_gemma3 else 1.0,
        post_norms=is_gemma3,
        sliding_window=keys.integer("attention.sliding_window") if is_gemma3 else 0,
        sliding_window_pattern=_sliding_window_pattern(keys, n_layers) if is_gemma3 else 0,
        rope_base_sliding=(
            keys.positive_number("rope.freq_base_swa", default=_GEMMA3_ROPE_BASE_SLIDING) if is_gemma3 else 0.0
        ),
    )
    _check_tensor_shapes(path, spec, tensors)
    return spec


def _default_attention_scale(architecture: str, n_layers: int, d_model: int, n_heads: int, head_dim: int) -> float:
    # Gemma 3 27B (62 layers) scales queries by d_model / n_heads instead of head_dim, as llama.cpp does.
    if architecture == "gemma3" and n_layers == 62:
        return 1.0 / math.sqrt(d_model / n_heads)
    return 1.0 / math.sqrt(head_dim)


def _sliding_window_pattern(keys: _Metadata, n_layers: int) -> int:
    """Every how many layers one attends globally. Gemma 3 files usually leave it to the family's fixed
    pattern; a file may state it as a number, or as one flag per layer (true: sliding) that must then
    follow such a pattern."""
    suffix = "attention.sliding_window_pattern"
    if not keys.has(suffix):
        return _GEMMA3_SLIDING_WINDOW_PATTERN
    value = keys.metadata[keys.key(suffix)]
    if isinstance(value, list) and len(value) == n_layers and all(isinstance(flag, bool) for flag in value):
        period = value.index(False) + 1 if False in value else n_layers + 1
        if value == [(layer + 1) % period != 0 for layer in range(n_layers)]:
            return period
        raise GGUFError(keys.path, keys.key(suffix), "sliding and global layers that do not repeat with one period "
                        "(every n-th layer global) are not supported")
    if isinstance(value, list):
        raise GGUFError(keys.path, keys.key(suffix), f"expected {n_layers} booleans (one per layer) or a number")
    return keys.integer(suffix)


def _refuse_softcapping(keys: _Metadata) -> None:
    """Gemma 2 caps attention and final logits with c * tanh(x / c); the decoder does not, so a file that
    asks for it (a nonzero cap) is refused rather than run wrongly."""
    for suffix in ("attn_logit_softcapping", "final_logit_softcapping"):
        if keys.has(suffix) and keys.number(suffix) != 0.0:
            problem = f"logit softcapping ({keys.number(suffix)}) is not supported"
            raise GGUFError(keys.path, keys.key(suffix), problem)


def _rope_scaling(keys: _Metadata, tensors: Mapping[str, TensorInfo]) -> RopeScaling:
    if "rope_freqs.weight" in tensors:
        return RopeScaling(
            kind="llama3",
            factor=keys.positive_number("rope.scaling.factor", default=1.0),
            original_context_length=keys.integer("rope.scaling.original_context_length", default=0, minimum=0),
            low_freq_factor=keys.number("rope.scaling.low_freq_factor", default=0.0),
            high_freq_factor=keys.number("rope.scaling.high_freq_factor", default=0.0),
        )
    kind = keys.text("rope.scaling.type", default="none")
    if kind == "none" and keys.has("rope.scale_linear"):  # the key older converters wrote
        return RopeScaling(kind="linear", factor=keys.positive_number("rope.scale_linear"))
    if kind == "none":
        return RopeScaling()
    if kind not in ("linear", "yarn"):
        problem = f"rope scaling {kind!r} is not supported (supported: none, linear, yarn)"
        raise GGUFError(keys.path, keys.key("rope.scaling.type"), problem)
    return RopeScaling(
        kind=kind,
        factor=keys.positive_number("rope.scaling.factor"),
        original_context_length=keys.integer("rope.scaling.original_context_length", default=0, minimum=0),
    )


def _present_in_every_layer(
    path: Path, tensors: Mapping[str, TensorInfo], n_layers: int, suffixes: tuple[str, ...]
) -> bool:
    """Whether every layer has all these tensors; a GGUFError when only some layers or some of them do."""
    names = [f"blk.{layer}.{suffix}" for layer in range(n_layers) for suffix in suffixes]
    missing = [name for name in names if name not in tensors]
    if missing and len(missing) < len(names):
        raise GGUFError(path, f"tensor {missing[0]}", f"missing while other layers have their {', '.join(suffixes)}")
    return not missing


def expected_tensor_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor the decoder reads, by GGUF name, with its shape in NumPy order."""
    d, q_width, kv_width = spec.d_model, spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (spec.vocab_size, d), "output_norm.weight": (d,)}
    if not spec.tied_output:
        shapes["output.weight"] = (spec.vocab_size, d)
    for layer in range(spec.n_layers):
        block = {
            "attn_norm.weight": (d,),
            "attn_q.weight": (q_width, d),
            "attn_k.weight": (kv_width, d),
            "attn_v.weight": (kv_width, d),
            "attn_output.weight": (d, q_width),
            "ffn_norm.weight": (d,),
        }
        if spec.qkv_bias:
            block.update({"attn_q.bias": (q_width,), "attn_k.bias": (kv_width,), "attn_v.bias": (kv_width,)})
        if spec.qk_norm:
            block.update({"attn_q_norm.weight": (spec.head_dim,), "attn_k_norm.weight": (spec.head_dim,)})
        if spec.post_norms:
            block.update({"post_attention_norm.weight": (d,), "post_ffw_norm.weight": (d,)})
        if spec.is_moe:
            experts, width = spec.n_experts, spec.expert_d_ff
            block.update(
                {
                    "ffn_gate_inp.weight": (experts, d),
                    "ffn_gate_exps.weight": (experts, width, d),
                    "ffn_up_exps.weight": (experts, width, d),
                    "ffn_down_exps.weight": (experts, d, width),
                }
            )
            if spec.shared_expert_d_ff:
                shared = spec.shared_expert_d_ff
                block.update(
                    {
                        "ffn_gate_inp_shexp.weight": (d,),
                        "ffn_gate_shexp.weight": (shared, d),
                        "ffn_up_shexp.weight": (shared, d),
                        "ffn_down_shexp.weight": (d, shared),
                    }
                )
        else:
            width = spec.d_ff
            block.update({"ffn_gate.weight": (width, d), "ffn_up.weight": (width, d), "ffn_down.weight": (d, width)})
        shapes.update({f"blk.{layer}.{name}": shape for name, shape in block.items()})
    if spec.rope_scaling.kind == "llama3":
        shapes["rope_freqs.weight"] = (spec.rope_dim // 2,)
    return shapes


def _check_tensor_shapes(path: Path, spec: ModelSpec, tensors: Mapping[str, TensorInfo]) -> None:
    """Every tensor the decoder reads is present with its shape, or that shape as one row (llama.cpp's
    converter keeps qwen2moe's shared-expert gate, a (1, d_model) matrix in PyTorch, that way)."""
    for name, shape in expected_tensor_shapes(spec).items():
        info = tensors.get(name)
        if info is None:
            problem = f"missing (a {spec.architecture} model with this metadata needs it)"
            raise GGUFError(path, f"tensor {name}", problem)
        if info.shape != shape and info.shape != (1, *shape):
            problem = f"shape {info.shape} does not match {shape} expected from the metadata"
            raise GGUFError(path, f"tensor {name}", problem)
