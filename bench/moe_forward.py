"""Target efficiency of Mixture-of-Experts models as MoESD plots it: the time of a forward of T rows in
each of S sequences over one row's and over T one-row forwards, with the distinct experts per layer it
read; and decode against llama.cpp on the random real-size file.

    python3 bench/run.py moe_forward [--targets random,moefied,dense] [--layers 6] [--threads 2]
                                     [--repeats 5] [--rounds 3] [--out FILE]

Targets:
  - random: Qwen3-30B-A3B's layer shapes (d_model 2048, 32 query / 4 key-value heads of 128, 128 experts
    of width 768, 8 per token, vocabulary 151,936) but --layers of its 48 layers, so that the file (about
    0.34 GB a layer) fits a shared machine. Attention, experts and the LM head are random MXFP4 blocks, the
    router random float32 (logits of unit spread, so tokens spread over the experts about uniformly), the
    embedding random BF16; the tokenizer is copied from the cached Qwen2.5 GGUF, so that llama.cpp loads
    the file. mlspecqd loads it at precision "mxfp4": the MXFP4 weights are used as stored. Cost only.
  - moefied: Qwen2.5-Coder 1.5B MoEfied by bench/moefy.py (16 experts, 4 per token, a shared expert;
    real routing of real text), BF16.
  - dense: the Qwen2.5-Coder 1.5B it was made from, BF16.

Measured, after a 512-token prompt of wiki text in each of 4 slots:
  - forward of T = 1..16 rows in each of S = 1, 2, 4 sequences (forward_batch): medians and bests of
    --repeats, ratios taken within pairs (the one-row forward of the same S right before), the distinct
    experts per layer it read (Model.expert_rows()) next to E (1 - (1 - k / E)^(S T)), what a uniform
    router would read;
  - on the random file, decode after the prompt, mlspecqd and llama-bench taking turns
    (bench/decode.py interleaved_decode).
and this process's peak resident memory. Prints JSON (also written to bench/results/moe_forward.json
unless --out says otherwise) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from bench import RESULTS, llamacpp
from bench.corpora import text
from bench.decode import PROMPT_TOKENS, interleaved_decode, seconds
from bench.machine import describe_machine
from mlspecqd import _native, hub
from mlspecqd.engine.model import Model
from mlspecqd.speculative.experts import routed_expert_share
from mlspecqd.tokenizer import Tokenizer

ARCHITECTURE = "qwen3moe"
SHAPES = {"d_model": 2048, "n_heads": 32, "n_kv_heads": 4, "head_dim": 128, "n_experts": 128, "n_experts_used": 8,
          "expert_d_ff": 768, "vocab_size": 151936, "context_length": 4096}
ROW_COUNTS = tuple(range(1, 17))
SEQUENCE_COUNTS = (1, 2, 4)
TOKENIZER_SOURCE = "qwen2.5-coder-0.5b"
DENSE_SOURCE = "qwen2.5-coder-1.5b"
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


def text_rows(tokenizer_source: Path, count: int, length: int) -> list[np.ndarray]:
    """`count` stretches of `length` tokens of the wiki text, far apart: real text, so that a router
    trained on text routes consecutive tokens as it would in use."""
    tokens = np.array(Tokenizer.from_gguf(tokenizer_source).encode(text("wiki"), add_special=False))
    stride = (len(tokens) - length) // count
    return [tokens[i * stride : i * stride + length] for i in range(count)]


def forward_times(model: Model, texts: list[np.ndarray], repeats: int) -> list[dict[str, Any]]:
    """Time of one forward of T rows in each of S sequences (forward_batch, each in its slot after a
    PROMPT_TOKENS-token prompt), for S in SEQUENCE_COUNTS and T in ROW_COUNTS, with the distinct experts
    per layer it read (Model.expert_rows() around it). Each T-row forward is timed right after the
    one-row forward of the same S, and its ratios are taken within that pair (the machine's memory
    speed drifts over minutes); medians over the repeats, and the best times."""
    model.reserve_slots(max(SEQUENCE_COUNTS))
    for slot in range(max(SEQUENCE_COUNTS)):
        model.forward(texts[slot][:PROMPT_TOKENS], 0, slot=slot)
    spec = model.spec
    sizes = [(S, T) for S in SEQUENCE_COUNTS for T in ROW_COUNTS]
    times: dict[tuple[int, int], list[float]] = {size: [] for size in sizes}
    ratios: dict[tuple[int, int], list[float]] = {size: [] for size in sizes}
    distinct: dict[tuple[int, int], list[float]] = {size: [] for size in sizes}

    def forward(S: int, T: int) -> float:
        segments = [(slot, texts[slot][PROMPT_TOKENS : PROMPT_TOKENS + T], PROMPT_TOKENS, True) for slot in range(S)]
        before = model.expert_rows()
        elapsed = seconds(lambda: model.forward_batch(segments))
        if spec.is_moe:
            distinct[S, T].append(float(np.count_nonzero(model.expert_rows() - before, axis=1).mean()))
        return elapsed

    for _ in range(repeats):
        for S, T in sizes:
            one_row = forward(S, 1)
            elapsed = forward(S, T)
            times[S, T].append(elapsed)
            ratios[S, T].append(elapsed / one_row)
    rows = []
    for S, T in sizes:
        row = {"sequences": S, "rows": T, "ms": 1e3 * statistics.median(times[S, T]),
               "best_ms": 1e3 * min(times[S, T]), "ratio_to_one_row": statistics.median(ratios[S, T]),
               "ratio_to_T_one_rows": statistics.median(ratios[S, T]) / T}
        if spec.is_moe:
            row["distinct_experts_per_layer"] = statistics.mean(distinct[S, T])
            row["uniform_distinct_experts_per_layer"] = expected_distinct_experts(spec.n_experts,
                                                                                  spec.n_experts_used, S * T)
        rows.append(row)
    return rows


def target_files(names: list[str], layers: int) -> dict[str, tuple[Path, str]]:
    """File and precision of each named target: "random" (the random real-size file, MXFP4), "moefied"
    (the MoEfied Qwen2.5-Coder 1.5B of bench/moefy.py, BF16), "dense" (the 1.5B it was made from, BF16)."""
    files = {}
    for name in names:
        if name == "random":
            files[name] = model_file(layers), "mxfp4"
        elif name == "moefied":
            from bench.moefy import moefied_model_file

            files[name] = moefied_model_file(DENSE_SOURCE), "bf16"
        elif name == "dense":
            files[name] = hub.resolve(DENSE_SOURCE), "bf16"
        else:
            raise SystemExit(f"unknown target '{name}' (known: random, moefied, dense)")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="random,moefied,dense", help="comma-separated: random, moefied, dense")
    parser.add_argument("--layers", type=int, default=6, help="layers of the random real-size file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="decode rounds on the random file, mlspecqd and llama-bench in turn (0: none)")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "moe_forward.json")
    args = parser.parse_args(argv)

    _native.set_num_threads(args.threads)
    texts = text_rows(hub.resolve(TOKENIZER_SOURCE), max(SEQUENCE_COUNTS), PROMPT_TOKENS + max(ROW_COUNTS))
    result: dict[str, Any] = {"machine": describe_machine(args.threads), "prompt_tokens": PROMPT_TOKENS,
                              "load_average_start": os.getloadavg(), "targets": {}}
    for name, (path, precision) in target_files(args.targets.split(","), args.layers).items():
        model = Model.load(path, precision=precision, context_length=PROMPT_TOKENS + 64)
        model.forward(np.arange(100, 116), 0)  # warm-up: first touch of the weights and buffers
        spec = model.spec
        entry: dict[str, Any] = {
            "file": str(path), "precision": precision, "file_gib": path.stat().st_size / 2**30,
            "layers": spec.n_layers, "n_experts": spec.n_experts, "n_experts_used": spec.n_experts_used,
            "routed_expert_share_of_one_row": routed_expert_share(model.tensors, spec.n_experts, spec.n_experts_used)
            if spec.is_moe else 0.0,
            "forward": forward_times(model, texts, args.repeats),
        }
        if name == "random" and args.rounds and llamacpp.available():
            entry["decode"] = interleaved_decode(model, path, args.threads, args.decode_tokens, args.rounds)
        result["targets"][name] = entry
        model.close()
        print(f"{name} done", file=sys.stderr, flush=True)
    # Weights used as stored are mapped file pages, counted once read.
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    print(efficiency_table(result["targets"]))
    return 0


def efficiency_table(targets: dict[str, Any]) -> str:
    """Markdown: per target and sequence count, a T-row forward's time over one row's and over T one-row
    forwards (MoESD's target efficiency is its inverse), with the distinct experts it read."""
    lines = ["| target | sequences | rows T | ms | / one row | / (T x one row) | distinct experts per layer "
             "| uniform E(1-(1-k/E)^(S T)) |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in targets.items():
        for row in entry["forward"]:
            experts = (f"{row['distinct_experts_per_layer']:.1f} | {row['uniform_distinct_experts_per_layer']:.1f}"
                       if "distinct_experts_per_layer" in row else "- | -")
            lines.append(f"| {name} | {row['sequences']} | {row['rows']} | {row['ms']:.1f} | "
                         f"{row['ratio_to_one_row']:.2f} | {row['ratio_to_T_one_rows']:.2f} | {experts} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
