"""GGUF checkpoints: the model spec and memory-mapped tensors of a file, native dequantization to
float32 / BF16, and conversion to other precisions.

    with open_gguf(path) as model:
        model.spec                              # ModelSpec: sizes, rope, norms, experts, ...
        model.metadata["tokenizer.ggml.tokens"] # plain Python values
        model.tensor_bf16("blk.0.attn_q.weight")  # uint16 BF16 bits, shape (N, K)
    convert(path, "model-bf16.gguf", "bf16")

Tensor names are GGUF's: token_embd.weight, output_norm.weight, output.weight (absent when tied),
blk.{i}.attn_norm.weight, blk.{i}.attn_{q,k,v,output}.weight, blk.{i}.attn_{q,k,v}.bias,
blk.{i}.attn_{q,k}_norm.weight, blk.{i}.ffn_norm.weight, blk.{i}.ffn_{gate,up,down}.weight; gemma3:
blk.{i}.post_attention_norm.weight, blk.{i}.post_ffw_norm.weight (Gemma norm weights in GGUF already
include the +1); MoE: blk.{i}.ffn_gate_inp.weight, blk.{i}.ffn_{gate,up,down}_exps.weight (experts
stacked first), shared expert blk.{i}.ffn_{gate,up,down}_shexp.weight and ffn_gate_inp_shexp.weight.
"""

from mlspecqd.gguf.file import DEQUANTIZABLE_TYPES, GGUFFile, open_gguf
from mlspecqd.gguf.format import GGUFError, TensorInfo
from mlspecqd.gguf.spec import ARCHITECTURES, ModelSpec, RopeScaling, expected_tensor_shapes
from mlspecqd.gguf.writer import CASTS, Cast, OutputTensor, conversion_plan, convert, write_gguf

__all__ = [
    "ARCHITECTURES",
    "CASTS",
    "DEQUANTIZABLE_TYPES",
    "Cast",
    "GGUFError",
    "GGUFFile",
    "ModelSpec",
    "OutputTensor",
    "RopeScaling",
    "TensorInfo",
    "conversion_plan",
    "convert",
    "expected_tensor_shapes",
    "open_gguf",
    "write_gguf",
]
