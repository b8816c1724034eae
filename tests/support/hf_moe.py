"""Tiny random Mixture-of-Experts checkpoints made with transformers (Qwen2-MoE, Qwen3-MoE, Mixtral) and
written to GGUF with the tensor names, layouts and metadata llama.cpp's convert_hf_to_gguf.py gives them:
the independent implementation the native MoE forward is compared with. Needs torch and transformers
(the `reference` extra); only tests and benchmarks import this module.

    model = tiny_model("qwen3moe", seed=0)
    write_gguf(model, "qwen3moe", path)
"""

from __future__ import annotations

import os

import gguf
import numpy as np
import torch
import transformers

# Shapes shared by the three families: 2 layers, 4 query and 2 key/value heads, 8 experts.
COMMON = {
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
CONFIGS = {
    "qwen2moe": lambda: transformers.Qwen2MoeConfig(
        **COMMON, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=64, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[]),
    "qwen3moe": lambda: transformers.Qwen3MoeConfig(
        **COMMON, head_dim=32, intermediate_size=96, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=3,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[]),
    "mixtral": lambda: transformers.MixtralConfig(**COMMON, intermediate_size=64, num_local_experts=8,
                                                  num_experts_per_tok=2),
}
# The GGUF architecture llama.cpp's converter writes: Mixtral is llama with experts.
GGUF_ARCHITECTURES = {"qwen2moe": "qwen2moe", "qwen3moe": "qwen3moe", "mixtral": "llama"}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A float32 model of the family with random weights scaled as a trained model's (matrices of unit
    output spread, norms near 1), every value representable in BF16 so that a BF16 copy is exact."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[family](), attn_implementation="eager").float()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name:
                values = 1.0 + 0.1 * noise
            elif parameter.ndim == 1:  # biases
                values = 0.1 * noise
            elif "embed_tokens" in name:
                values = noise
            else:
                values = noise / parameter.shape[-1] ** 0.5
            parameter.copy_(values.to(torch.bfloat16).float())
    return model.eval()


def logits(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    """float32 logits (T x vocab) of one sequence from position 0."""
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)[None]).logits[0].float().numpy()


def _permute_for_interleaved_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: rows of q or k reordered so that GGUF's llama rope, which rotates
    adjacent pairs, equals transformers' rotation of the two halves of each head."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: torch.nn.Module, family: str) -> dict[str, np.ndarray]:
    """The state dict under GGUF names (NumPy order), experts stacked, as the converter writes them."""
    config = model.config
    state = {name: value.float().numpy() for name, value in model.state_dict().items()}
    tensors = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
        "output.weight": state["lm_head.weight"],
    }
    for layer in range(config.num_hidden_layers):
        hf, block = f"model.layers.{layer}.", f"blk.{layer}."
        names = {
            "input_layernorm.weight": "attn_norm.weight",
            "post_attention_layernorm.weight": "ffn_norm.weight",
            "self_attn.q_proj.weight": "attn_q.weight",
            "self_attn.k_proj.weight": "attn_k.weight",
            "self_attn.v_proj.weight": "attn_v.weight",
            "self_attn.o_proj.weight": "attn_output.weight",
            "self_attn.q_proj.bias": "attn_q.bias",
            "self_attn.k_proj.bias": "attn_k.bias",
            "self_attn.v_proj.bias": "attn_v.bias",
            "self_attn.q_norm.weight": "attn_q_norm.weight",
            "self_attn.k_norm.weight": "attn_k_norm.weight",
            "mlp.gate.weight": "ffn_gate_inp.weight",
            "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
            "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
            "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
            "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",  # (1, d_model), kept as a row
        }
        tensors.update({block + gguf_name: state[hf + name] for name, gguf_name in names.items() if hf + name in state})
        gate_up = state[hf + "mlp.experts.gate_up_proj"]  # experts x (gate rows, then up rows) x d_model
        width = gate_up.shape[1] // 2
        tensors[block + "ffn_gate_exps.weight"] = np.ascontiguousarray(gate_up[:, :width])
        tensors[block + "ffn_up_exps.weight"] = np.ascontiguousarray(gate_up[:, width:])
        tensors[block + "ffn_down_exps.weight"] = state[hf + "mlp.experts.down_proj"]
        if family == "mixtral":
            heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
            tensors[block + "attn_q.weight"] = _permute_for_interleaved_rope(tensors[block + "attn_q.weight"], heads)
            tensors[block + "attn_k.weight"] = _permute_for_interleaved_rope(tensors[block + "attn_k.weight"], kv_heads)
    return tensors


def write_gguf(model: torch.nn.Module, family: str, path: str | os.PathLike[str]) -> None:
    """Writes the model as llama.cpp's converter would (float32 tensors, no tokenizer)."""
    config = model.config
    architecture = GGUF_ARCHITECTURES[family]
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    if family == "qwen3moe":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_expert_count(config.num_local_experts if family == "mixtral" else config.num_experts)
    writer.add_expert_used_count(config.num_experts_per_tok)
    if family != "mixtral":
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    if family == "qwen2moe":
        writer.add_expert_shared_feed_forward_length(config.shared_expert_intermediate_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, values in gguf_tensors(model, family).items():
        writer.add_tensor(name, np.ascontiguousarray(values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
