"""Tiny synthetic GGUF models for tests, written with gguf.GGUFWriter.

    values = write_model_gguf(tmp_path / "m.gguf", "qwen2", {"n_layers": 1}, tensor_type=GGMLQuantizationType.Q8_0)

writes a model of the given architecture with random weights and a small GPT-2 style vocabulary, and
returns every tensor as the float32 values the file holds (after quantization), by GGUF name, so a
NumPy reference can run on exactly the stored weights.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mlspecqd import hub
from mlspecqd.gguf import ModelSpec, RopeScaling, expected_tensor_shapes

# Small sizes every architecture accepts; rows are multiples of 32 so the 32-value block types work.
# K-quant types (256-value blocks) need d_model and d_ff (or expert_d_ff) multiples of 256.
BASE_SPEC: dict[str, Any] = {
    "n_layers": 2,
    "d_model": 64,
    "n_heads": 4,
    "n_kv_heads": 2,
    "head_dim": None,  # None: d_model / n_heads, written as attention.key_length only for qwen3 / gemma3
    "d_ff": 96,
    "vocab_size": 320,
    "context_length": 256,
    "rope_base": 10000.0,
    "norm_eps": 1e-6,
    "tied_output": False,
    "qkv_bias": False,
    "qk_norm": False,
    "n_experts": 0,
    "n_experts_used": 0,
    "expert_d_ff": 0,
    "shared_expert_d_ff": 0,
    "sliding_window": 0,
    # None, or e.g. {"type": "linear", "factor": 2.0}, {"type": "yarn", "factor": 4.0, "original_context_length": 64}
    "rope_scaling": None,
}
ARCHITECTURE_SPECS: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {"qkv_bias": True},
    "qwen3": {"qk_norm": True, "head_dim": 32},
    "gemma3": {"qk_norm": True, "head_dim": 32, "tied_output": True, "sliding_window": 16},
    "qwen2moe": {"qkv_bias": True, "n_experts": 4, "n_experts_used": 2, "expert_d_ff": 32, "shared_expert_d_ff": 64},
    "qwen3moe": {"qk_norm": True, "head_dim": 32, "n_experts": 4, "n_experts_used": 2, "expert_d_ff": 32},
}
# Types gguf.quants can quantize to; K-quant tensors are written as random blocks instead.
QUANTIZABLE_TYPES = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.MXFP4,
}
# Byte offsets of the float16 scale fields inside one block of each type, and the largest integer the
# scale multiplies (random_blocks draws scales so that values stay within about +-1).
SCALE_FIELDS = {
    GGMLQuantizationType.Q4_0: ((0,), 8),
    GGMLQuantizationType.Q4_1: ((0, 2), 15),
    GGMLQuantizationType.Q5_0: ((0,), 16),
    GGMLQuantizationType.Q5_1: ((0, 2), 31),
    GGMLQuantizationType.Q8_0: ((0,), 127),
    GGMLQuantizationType.Q4_K: ((0, 2), 63 * 15),
    GGMLQuantizationType.Q5_K: ((0, 2), 63 * 31),
    GGMLQuantizationType.Q6_K: ((208,), 127 * 32),
}


def model_spec(architecture: str, spec_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fixture's hyper-parameters for an architecture (names as in mlspecqd.gguf.ModelSpec)."""
    spec = {**BASE_SPEC, **ARCHITECTURE_SPECS[architecture], **(spec_overrides or {})}
    unknown = set(spec) - set(BASE_SPEC)
    if unknown:
        raise ValueError(f"unknown spec fields {sorted(unknown)}")
    return spec


def random_blocks(ggml_type: GGMLQuantizationType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of a quantized type with finite scales, values within about +-1 (uint8, n_blocks x bytes)."""
    block_bytes = GGML_QUANT_SIZES[ggml_type][1]
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    if ggml_type == GGMLQuantizationType.MXFP4:
        blocks[:, 0] = rng.integers(118, 124, size=n_blocks)  # 2^-9 .. 2^-4
    offsets, largest_integer = SCALE_FIELDS.get(ggml_type, ((), 1))
    for offset in offsets:
        scales = ((0.1 + 0.9 * rng.random(n_blocks)) / largest_integer).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def _tensor_shapes(spec: Mapping[str, Any], architecture: str) -> dict[str, tuple[int, ...]]:
    head_dim = spec["head_dim"] or spec["d_model"] // spec["n_heads"]
    sizes = {name: spec[name] for name in BASE_SPEC if name not in ("head_dim", "rope_scaling", "sliding_window")}
    model = ModelSpec(
        architecture=architecture,
        head_dim=head_dim,
        rope_dim=head_dim,
        rope_style="neox",
        rope_scaling=RopeScaling(),
        post_norms=architecture == "gemma3",
        **sizes,
    )
    return expected_tensor_shapes(model)


def _random_values(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith("norm.weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 1:  # biases, the shared-expert gate
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32)


def _metadata(writer: gguf.GGUFWriter, architecture: str, spec: Mapping[str, Any]) -> None:
    writer.add_block_count(spec["n_layers"])
    writer.add_context_length(spec["context_length"])
    writer.add_embedding_length(spec["d_model"])
    writer.add_head_count(spec["n_heads"])
    writer.add_head_count_kv(spec["n_kv_heads"])
    writer.add_rope_freq_base(spec["rope_base"])
    writer.add_layer_norm_rms_eps(spec["norm_eps"])
    writer.add_vocab_size(spec["vocab_size"])
    if spec["head_dim"] is not None:
        writer.add_key_length(spec["head_dim"])
        writer.add_value_length(spec["head_dim"])
    if spec["n_experts"]:
        writer.add_expert_count(spec["n_experts"])
        writer.add_expert_used_count(spec["n_experts_used"])
        writer.add_feed_forward_length(spec["d_ff"])
        if architecture != "llama":  # Mixtral-style files give the expert width as feed_forward_length
            writer.add_expert_feed_forward_length(spec["expert_d_ff"])
        if spec["shared_expert_d_ff"]:
            writer.add_expert_shared_feed_forward_length(spec["shared_expert_d_ff"])
    else:
        writer.add_feed_forward_length(spec["d_ff"])
    if spec["sliding_window"]:
        writer.add_sliding_window(spec["sliding_window"])
    scaling = spec["rope_scaling"]
    if scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType(scaling["type"]))
        writer.add_rope_scaling_factor(scaling["factor"])
        if "original_context_length" in scaling:
            writer.add_rope_scaling_orig_ctx_len(scaling["original_context_length"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _byte_to_unicode() -> list[str]:
    """GPT-2's printable stand-in for each byte value (byte-level BPE token spelling)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelled, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelled[byte] = chr(byte)
        else:
            spelled[byte] = chr(256 + extra)
            extra += 1
    return [spelled[byte] for byte in range(256)]


def _tokenizer(writer: gguf.GGUFWriter, vocab_size: int) -> None:
    """A GPT-2 style vocabulary: the 256 byte tokens, two merged ones, an end-of-text token, fillers."""
    tokens = _byte_to_unicode() + ["Ġt", "he", "<|endoftext|>"]
    if vocab_size < len(tokens):
        raise ValueError(f"vocab_size must be at least {len(tokens)}")
    tokens += [f"<filler_{index}>" for index in range(vocab_size - len(tokens))]
    token_types = [gguf.TokenType.NORMAL] * vocab_size
    end_of_text = tokens.index("<|endoftext|>")
    token_types[end_of_text] = gguf.TokenType.CONTROL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(end_of_text)
    writer.add_eos_token_id(end_of_text)
    writer.add_add_bos_token(False)


def write_model_gguf(
    path: str | os.PathLike[str],
    architecture: str = "llama",
    spec_overrides: Mapping[str, Any] | None = None,
    tensors: Mapping[str, np.ndarray] | None = None,
    tensor_type: GGMLQuantizationType = GGMLQuantizationType.F32,
    tensor_types: Mapping[str, GGMLQuantizationType] | None = None,
    seed: int = 0,
    extra_metadata: Mapping[str, Any] | None = None,
    drop_metadata: Iterable[str] = (),
    drop_tensors: Iterable[str] = (),
    extra_tensors: Mapping[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None,
) -> dict[str, np.ndarray]:
    """Writes a tiny model and returns the float32 values of its tensors as stored.

    tensors: values for some tensors (float32, the tensor's shape) instead of random ones.
    tensor_type: the type of every matrix (2-D and up; 1-D tensors stay F32); tensor_types overrides
    it per tensor name. K-quant matrices hold random blocks and cannot take given values.
    extra_metadata: more keys (or new values) as {key: value} (ints are written as UINT32);
    drop_metadata / drop_tensors: names to leave out (for tests of bad input); drops happen before
    extra_metadata is added, so dropping and re-adding a key changes its type.
    extra_tensors: {name: (raw array, ggml type)} written as they are (e.g. a type nothing dequantizes).
    """
    spec = model_spec(architecture, spec_overrides)
    rng = np.random.default_rng(seed)
    given = dict(tensors or {})
    types = dict(tensor_types or {})
    drop_metadata, drop_tensors = set(drop_metadata), set(drop_tensors)

    writer = gguf.GGUFWriter(path, architecture)
    _metadata(writer, architecture, spec)
    _tokenizer(writer, spec["vocab_size"])
    for key in drop_metadata:
        del writer.kv_data[0][key]
    for key, value in (extra_metadata or {}).items():
        _add_value(writer, key, value)

    stored: dict[str, np.ndarray] = {}
    for name, shape in _tensor_shapes(spec, architecture).items():
        if name in drop_tensors:
            continue
        ggml_type = types.get(name, tensor_type if len(shape) > 1 else GGMLQuantizationType.F32)
        values = given.pop(name, None)
        if values is not None and values.shape != shape:
            raise ValueError(f"{name}: given shape {values.shape}, the model needs {shape}")
        raw = _encode(name, shape, ggml_type, values, rng)
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=ggml_type)
        stored[name] = gguf.quants.dequantize(raw, ggml_type).reshape(shape).astype(np.float32)
    if given:
        raise ValueError(f"the model has no tensors {sorted(given)}")
    for name, (raw, ggml_type) in (extra_tensors or {}).items():
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=ggml_type)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def _encode(
    name: str,
    shape: tuple[int, ...],
    ggml_type: GGMLQuantizationType,
    values: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """The stored form of a tensor: float arrays for F32 / F16, uint8 block bytes (byte shape) otherwise."""
    if ggml_type in QUANTIZABLE_TYPES:
        values = _random_values(name, shape, rng) if values is None else values.astype(np.float32)
        return gguf.quants.quantize(values, ggml_type)
    if values is not None:
        raise ValueError(f"{name}: gguf.quants cannot quantize to {ggml_type.name}; leave its values random")
    block_elements, block_bytes = GGML_QUANT_SIZES[ggml_type]
    if shape[-1] % block_elements:
        raise ValueError(f"{name}: row length {shape[-1]} is not a multiple of {ggml_type.name}'s {block_elements}")
    n_blocks = math.prod(shape) // block_elements
    return random_blocks(ggml_type, n_blocks, rng).reshape(*shape[:-1], shape[-1] // block_elements * block_bytes)


def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, value)


def tensor_entry_offset(data: bytes, name: str) -> int:
    """Where a tensor's table entry (its name's length prefix) starts in a GGUF file's bytes."""
    encoded = name.encode()
    return data.index(len(encoded).to_bytes(8, "little") + encoded)


def models_dir() -> Path:
    """Where `mlspecqd pull` caches the real GGUF checkpoints."""
    return hub.cache_dir()
