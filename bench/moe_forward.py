"""A real-size Mixture-of-Experts layer stack with random MXFP4 weights: the time of a T-row forward next
to the expected number of distinct experts per layer, and decode against llama.cpp on the same file.

    python3 bench/run.py moe_forward [--layers 6] [--threads 2] [--rounds 3] [--out FILE]

The model has Qwen3-30B-A3B's layer shapes (d_model 2048, 32 query / 4 key-value heads of 128, 128
experts of width 768, 8 per token, vocabulary 151,936) but --layers of its 48 layers, so that the file
(about 0.34 GB a layer) fits a shared machine. Attention, experts and the LM head are random MXFP4
blocks, the router random float32 (logits of unit spread, so tokens spread over the experts about
uniformly), the embedding random BF16; the tokenizer is copied from the cached Qwen2.5 GGUF, so that
llama.cpp loads the file. mlspecqd loads it at precision "mxfp4": the MXFP4 weights are used as stored.

Measured:
  - forward of T = 1, 2, 4, 9, 16 rows after a 512-token prompt (median and best of --repeats), with
    E (1 - (1 - k / E)^T), the distinct experts a layer expects to read for T rows routed uniformly;
  - decode after the prompt, mlspecqd and llama-bench taking turns (bench/decode.py interleaved_decode).
and this process's peak resident memory after the forwards. Prints JSON (also written to
bench/results/moe_forward.json unless --out says otherwise).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from bench import RESULTS, llamacpp
from bench.decode import PROMPT_TOKENS, interleaved_decode, seconds
from bench.machine import describe_machine
from mlspecqd import _native, hub
from mlspecqd.engine.model import Model

ARCHITECTURE = "qwen3moe"
SHAPES = {"d_model": 2048, "n_heads": 32, "n_kv_heads": 4, "head_dim": 128, "n_experts": 128, "n_experts_used": 8,
          "expert_d_ff": 768, "vocab_size": 151936, "context_length": 4096}
ROW_COUNTS = (1, 2, 4, 9, 16)
TOKENIZER_SOURCE = "qwen2.5-coder-0.5b"
MXFP4 = GGMLQuantizationType.MXFP4


def expected_distinct_experts(E: int, k: int, T: int) -> float:
    return E * (1.0 - (1.0 - k / E) ** T)


def random_mxfp4(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random MXFP4 blocks for a (..., K) weight: uint8 (..., K / 32 * 17), block scales 2^-9 .. 2^-4."""
    *rows, K = shape
    blocks = rng.integers(0, 256, size=(*rows, K // 32, 17), dtype=np.uint8)
    blocks[..., 0] = rng.integers(118, 124, size=blocks.shape[:-1], dtype=np.uint8)
    return blocks.reshape(*rows, K // 32 * 17)


def random_bf16(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random BF16 bit patterns of magnitude 2^-3 .. 2^1 and either sign, as float values go."""
    exponent = rng.integers(124, 128, size=shape, dtype=np.uint16) << 7
    return exponent | rng.integers(0, 128, size=shape, dtype=np.uint16) | (rng.integers(0, 2, size=shape,
                                                                                         dtype=np.uint16) << 15)


def write_model(path: Path, layers: int, seed: int = 0) -> None:
    s = SHAPES
    d, E, F = s["d_model"], s["n_experts"], s["expert_d_ff"]
    q_width, kv_width = s["n_heads"] * s["head_dim"], s["n_kv_heads"] * s["head_dim"]
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, ARCHITECTURE)
    writer.add_block_count(layers)
    writer.add_context_length(s["context_length"])
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(6144)
    writer.add_head_count(s["n_heads"])
    writer.add_head_count_kv(s["n_kv_heads"])
    writer.add_key_length(s["head_dim"])
    writer.add_value_length(s["head_dim"])
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_expert_count(E)
    writer.add_expert_used_count(s["n_experts_used"])
    writer.add_expert_feed_forward_length(F)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    with open(hub.cache_dir() / hub.NAMED_MODELS[TOKENIZER_SOURCE].filename, "rb") as handle:
        source = gguf.GGUFReader(handle.name)
        for key, field in source.fields.items():
            if key.startswith("tokenizer."):
                writer.add_key_value(key, field.contents(), field.types[0],
                                     field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)

    def add(name: str, raw: np.ndarray, ggml_type: GGMLQuantizationType) -> None:
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=ggml_type)

    def vector(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    add("token_embd.weight", random_bf16((s["vocab_size"], d), rng), GGMLQuantizationType.BF16)
    add("output_norm.weight", vector(d), GGMLQuantizationType.F32)
    add("output.weight", random_mxfp4((s["vocab_size"], d), rng), MXFP4)
    for layer in range(layers):
        block = f"blk.{layer}."
        add(block + "attn_norm.weight", vector(d), GGMLQuantizationType.F32)
        add(block + "attn_q.weight", random_mxfp4((q_width, d), rng), MXFP4)
        add(block + "attn_k.weight", random_mxfp4((kv_width, d), rng), MXFP4)
        add(block + "attn_v.weight", random_mxfp4((kv_width, d), rng), MXFP4)
        add(block + "attn_output.weight", random_mxfp4((d, q_width), rng), MXFP4)
        add(block + "attn_q_norm.weight", vector(s["head_dim"]), GGMLQuantizationType.F32)
        add(block + "attn_k_norm.weight", vector(s["head_dim"]), GGMLQuantizationType.F32)
        add(block + "ffn_norm.weight", vector(d), GGMLQuantizationType.F32)
        router = (rng.standard_normal((E, d)) / np.sqrt(d)).astype(np.float32)
        add(block + "ffn_gate_inp.weight", router, GGMLQuantizationType.F32)
        add(block + "ffn_gate_exps.weight", random_mxfp4((E, F, d), rng), MXFP4)
        add(block + "ffn_up_exps.weight", random_mxfp4((E, F, d), rng), MXFP4)
        add(block + "ffn_down_exps.weight", random_mxfp4((E, d, F), rng), MXFP4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def model_file(layers: int) -> Path:
    """The cached file of `layers` layers, written (whole, then renamed) the first time it is asked for."""
    path = hub.cache_dir() / f"bench-{ARCHITECTURE}-30b-a3b-shapes-{layers}-layers.mxfp4.gguf"
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        write_model(partial, layers)
        partial.replace(path)
    return path


def forward_times(model: Model, repeats: int) -> list[dict[str, Any]]:
    """Median time of a T-row forward after a PROMPT_TOKENS-token prompt, for each T of ROW_COUNTS."""
    rng = np.random.default_rng(2)
    prompt, rows = rng.integers(100, 20000, PROMPT_TOKENS), rng.integers(100, 20000, max(ROW_COUNTS))
    model.forward(prompt, 0)
    E, k = SHAPES["n_experts"], SHAPES["n_experts_used"]
    times = {T: [] for T in ROW_COUNTS}
    for _ in range(repeats):
        for T in ROW_COUNTS:
            times[T].append(seconds(lambda T=T: model.forward(rows[:T], PROMPT_TOKENS, all_logits=True)))
    median = {T: statistics.median(times[T]) for T in ROW_COUNTS}
    best = {T: min(times[T]) for T in ROW_COUNTS}  # the least disturbed run, on a machine others share
    return [{"rows": T, "ms": 1e3 * median[T], "ratio_to_one_row": median[T] / median[1], "best_ms": 1e3 * best[T],
             "best_ratio_to_one_row": best[T] / best[1],
             "expected_distinct_experts_per_layer": expected_distinct_experts(E, k, T),
             "expected_experts_ratio_to_one_row": expected_distinct_experts(E, k, T) / k} for T in ROW_COUNTS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3, help="decode rounds, mlspecqd and llama-bench in turn")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "moe_forward.json")
    args = parser.parse_args(argv)

    path = model_file(args.layers)
    _native.set_num_threads(args.threads)
    model = Model.load(path, precision="mxfp4", context_length=PROMPT_TOKENS + 64)
    model.forward(np.arange(100, 116), 0)  # warm-up: first touch of the weights and buffers
    result: dict[str, Any] = {
        "machine": describe_machine(args.threads),
        "model": {"file": str(path), "layers": args.layers, **SHAPES, "file_gib": path.stat().st_size / 2**30},
        "prompt_tokens": PROMPT_TOKENS,
        "forward": forward_times(model, args.repeats),
        # Weights used as stored are mapped file pages, counted once read.
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if llamacpp.available():
        result["decode"] = interleaved_decode(model, path, args.threads, args.decode_tokens, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
