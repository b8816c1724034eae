"""Experts in mixed precision, a Pareto sweep: weight memory, decode speed and perplexity of an MoE model
with a fraction of its experts in BF16 (the most used first) and the rest in MXFP4.

    python3 bench/run.py moe_precision [--model GGUF | --random-real-size] [--fractions 0,0.125,0.25,0.5,1]
                                       [--random-fraction 0.25] [--calibration-tokens 4096]
                                       [--perplexity-tokens 2048] [--window 512] [--decode-tokens 32]
                                       [--rounds 3] [--threads 2] [--dense-precision bf16] [--out FILE]

--model: an MoE GGUF; default the MoEfied Qwen2.5-Coder-1.5B (bench/moefy.py, 16 experts of which 4 run,
built into the cache when absent), real text with real, skewed expert use and BF16 source weights.
--random-real-size: bench/moe_forward.py's random file instead (Qwen3-30B-A3B layer shapes, 6 layers,
experts stored MXFP4), where a BF16 expert holds the same values as its MXFP4 blocks and the router is
random, so only memory and speed mean something (use --perplexity-tokens 0 to skip perplexity).
--dense-precision: every other linear weight (BF16 by default).

The wiki text is split: its first --perplexity-tokens tokens are held out for perplexity and decoding (the
tokens bench/perplexity.py and bench/moefy.py score), the --calibration-tokens after them give the router
counts (Model.expert_rows over independent chunks of 512, on the all-MXFP4 model). Each
point loads the model with its BF16 experts (Model.load(bf16_experts=...); the other linear weights
--dense-precision) and measures:
  - weights: bytes of the model's arrays; with its MXFP4 sibling (the ML-SpecQD self-draft, sharing the
    MXFP4 experts; and the "mxfp4-dense" one, sharing every expert), the bytes of both together (shared
    arrays once) over the target's;
  - decode: one-token forwards over held-out text after a 128-token prompt, --rounds times, taking turns
    token by token with the all-MXFP4 model (kept loaded as the baseline) so that each pair meets one
    machine state: the median of the per-token ratios, each model's median rate, and the point's best;
    and the weight bytes a decoded token reads on average with the routing decode met (memory-bound
    decode time is about that over the memory bandwidth, whatever the machine's load);
  - perplexity of the held-out text in windows of --window (bench/perplexity.py).
The control point (--random-fraction) holds that fraction of the experts in BF16 chosen at random (seed
0) instead of the most used. Per point, "speed per perplexity increase" is tokens/s over (perplexity -
the all-BF16 perplexity + 1e-9); the goal is one mixed point strictly better than both ends on it.
Prints JSON (also written to bench/results/moe_precision.json unless --out says otherwise), a markdown
table, and writes the SVG plot beside the JSON (moe_precision.svg).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS
from bench.corpora import text
from bench.machine import describe_machine
from bench.moe_forward import model_file
from bench.moe_memory import resident_gib
from bench.moefy import moefied_model_file
from bench.perplexity import negative_log_likelihood
from bench.plot_moe_precision import write_svg
from mlspecqd import _native
from mlspecqd.apps.expert_profile import measure_expert_rows
from mlspecqd.engine import mixed_experts, quant
from mlspecqd.engine.model import Model
from mlspecqd.gguf import open_gguf
from mlspecqd.tokenizer import Tokenizer

GIB = 2**30
PROMPT_TOKENS = 128


def model_shape(path: Path) -> tuple[int, int]:
    """(n_layers, n_experts) of an MoE file."""
    with open_gguf(path) as gguf_file:
        return gguf_file.spec.n_layers, gguf_file.spec.n_experts


def context_length(args: argparse.Namespace) -> int:
    return max(args.window, PROMPT_TOKENS + args.decode_tokens)


def paired_decode_seconds(model: Model, baseline: Model, tokens: np.ndarray,
                          decode_tokens: int) -> list[tuple[float, float]]:
    """(model's, baseline's) seconds of each one-token forward over tokens[PROMPT_TOKENS:], after the
    prompt before them, the two models taking turns token by token so that each pair meets one machine
    state (other processes change the speed within seconds); who goes first alternates."""
    for each in (model, baseline):
        each.forward(tokens[:PROMPT_TOKENS], 0)
    pairs = []
    for position in range(PROMPT_TOKENS, PROMPT_TOKENS + decode_tokens):
        token = tokens[position : position + 1]
        order = (model, baseline) if position % 2 else (baseline, model)
        times = {}
        for each in order:
            started = time.perf_counter()
            each.forward(token, position)
            times[id(each)] = time.perf_counter() - started
        pairs.append((times[id(model)], times[id(baseline)]))
    return pairs


def bytes_read_per_token(model: Model, expert_rows: np.ndarray) -> float:
    """Weight bytes one decoded token reads, with the routing `expert_rows` (n_layers x n_experts, summed
    over some tokens) averaged: every dense linear weight and the LM head, and each expert's three
    matrices as often as rows chose it. What bounds decode where memory is the bottleneck."""
    spec, tensors = model.spec, model.tensors
    dense = sum(mixed_experts.tensor_bytes(tensor) for name, tensor in tensors.items()
                if quant.is_linear_weight(name) and not quant.is_expert_weight(name))
    if "output.weight" not in tensors:
        dense += tensors["token_embd.weight"].nbytes  # a tied head reads the embedding
    tokens = expert_rows.sum() / spec.n_experts_used / spec.n_layers
    expert = 0
    for layer in range(spec.n_layers):
        stacks = [mixed_experts.per_expert(tensors[f"blk.{layer}.ffn_{kind}_exps.weight"])
                  for kind in ("gate", "up", "down")]
        for e in range(spec.n_experts):
            expert += expert_rows[layer, e] * sum(stack[e].nbytes for stack in stacks)
    return float(dense + expert / tokens)


def measure_point(path: Path, mask: np.ndarray, baseline: Model, held_out: np.ndarray,
                  args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    model = Model.load(path, args.dense_precision, context_length(args), bf16_experts=mask)
    row: dict[str, Any] = {"bf16_experts": int(mask.sum()), "fraction": float(mask.mean()),
                           "load_seconds": time.perf_counter() - started, "weight_bytes": model.weight_bytes,
                           "resident_after_load_gib": resident_gib()}
    alone = mixed_experts.resident_bytes([model.tensors])
    for spec, cast_experts in (("mxfp4", True), ("mxfp4_dense", False)):
        draft = model.sibling("mxfp4", cast_experts=cast_experts)
        together = mixed_experts.resident_bytes([model.tensors, draft.tensors])
        row[f"with_{spec}_draft_bytes"] = together
        row[f"with_{spec}_draft_over_target"] = together / alone
        draft.close()
    model.reset_expert_rows()
    pairs = [pair for _ in range(args.rounds)
             for pair in paired_decode_seconds(model, baseline, held_out, args.decode_tokens)]
    decoded_rows = model.expert_rows()  # prompts and decoded tokens: the routing decode meets
    row["weight_bytes_read_per_token"] = bytes_read_per_token(model, decoded_rows)
    own, base = zip(*pairs)
    row.update(decode_tokens_per_second=1.0 / statistics.median(own),
               baseline_decode_tokens_per_second=1.0 / statistics.median(base),
               decode_vs_all_mxfp4=statistics.median(b / o for o, b in pairs),
               decode_best_tokens_per_second=1.0 / min(own))
    if args.perplexity_tokens > 0:
        total, count = negative_log_likelihood(model, held_out[: args.perplexity_tokens], args.window)
        row.update(perplexity=float(np.exp(total / count)), tokens_scored=count)
    model.close()
    return row


def add_trade_off(rows: list[dict[str, Any]]) -> None:
    """Per point with perplexity: tokens/s gained per unit of perplexity given up, from the all-BF16 end
    (the chord to the all-MXFP4 end has that end's value), and whether the point lies above that chord,
    i.e. is strictly better than both ends on the trade. Once with the measured speed relative to the
    all-MXFP4 model (paired tokens: every point against the same baseline, which a loaded machine blurs
    far less than absolute rates), and once with the memory-bound rate 1 / weight bytes read per token
    (load-independent; what a quiet machine's decode follows, up to its bandwidth)."""
    ends = {row["fraction"]: row for row in rows if row["choice"] == "hot-first" and "perplexity" in row}
    if 0.0 not in ends or 1.0 not in ends:
        return
    bf16, mxfp4 = ends[1.0], ends[0.0]
    speeds = {"paired": lambda row: row["decode_vs_all_mxfp4"],
              "memory_bound": lambda row: 1e9 / row["weight_bytes_read_per_token"]}
    def gain(row: dict[str, Any], speed: Any) -> float:
        lost = row["perplexity"] - bf16["perplexity"]
        return (speed(row) - speed(bf16)) / lost if lost > 0 else float("nan")

    for kind, speed in speeds.items():
        chord = gain(mxfp4, speed)
        for row in rows:
            if "perplexity" in row and row is not bf16:
                row[f"{kind}_speed_gain_per_perplexity_increase"] = gain(row, speed)
                row[f"{kind}_above_the_chord_of_the_ends"] = bool(row is not mxfp4 and gain(row, speed) > chord)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="an MoE GGUF (default: the MoEfied 1.5B)")
    parser.add_argument("--random-real-size", action="store_true", help="bench/moe_forward.py's random file")
    parser.add_argument("--fractions", default="0,0.125,0.25,0.5,1",
                        help="hot-first points; the ends 0 and 1 are needed for the trade-off columns")
    parser.add_argument("--random-fraction", type=float, default=0.25)
    parser.add_argument("--calibration-tokens", type=int, default=4096)
    parser.add_argument("--perplexity-tokens", type=int, default=2048)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dense-precision", choices=("bf16", "mxfp4"), default="bf16",
                        help="every linear weight but the experts (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS / "moe_precision.json")
    args = parser.parse_args(argv)
    _native.set_num_threads(args.threads)
    path = args.model or (model_file(6) if args.random_real_size else moefied_model_file())
    tokens = np.array(Tokenizer.from_gguf(path).encode(text("wiki"), add_special=False))
    held_out_count = max(args.perplexity_tokens, PROMPT_TOKENS + args.decode_tokens)
    held_out, calibration = tokens[:held_out_count], tokens[held_out_count : held_out_count + args.calibration_tokens]
    if len(calibration) < args.calibration_tokens:
        parser.error(f"the wiki text has {len(tokens)} tokens: too few for {held_out_count} held-out and "
                     f"{args.calibration_tokens} calibration ones")

    machine_before = describe_machine(args.threads)
    all_mxfp4 = np.zeros(model_shape(path), dtype=bool)
    baseline = Model.load(path, args.dense_precision, context_length(args), bf16_experts=all_mxfp4)
    started = time.perf_counter()
    expert_rows = measure_expert_rows(baseline, calibration)
    calibration_seconds = time.perf_counter() - started
    total = expert_rows.size
    points: list[tuple[str, np.ndarray]] = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        count = mixed_experts.expert_count_for_fraction(fraction, total)
        points.append(("hot-first", mixed_experts.hot_expert_mask(expert_rows, count)))
    count = mixed_experts.expert_count_for_fraction(args.random_fraction, total)
    random_mask = np.zeros(total, dtype=bool)
    random_mask[np.random.default_rng(0).permutation(total)[:count]] = True
    points.append(("random", random_mask.reshape(expert_rows.shape)))

    rows = []
    for choice, mask in points:
        row = {"choice": choice, **measure_point(path, mask, baseline, held_out, args)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    baseline.close()

    share = expert_rows / expert_rows.sum(axis=1, keepdims=True)
    report: dict[str, Any] = {
        "model": str(path), "text": "wiki.utf8 (exllamav2 0.3.2): held-out, then calibration",
        "calibration_tokens": len(calibration), "calibration_seconds": calibration_seconds,
        "expert_rows": expert_rows.tolist(),
        "router_skew": {"busiest_expert_share_mean": float(share.max(axis=1).mean()),
                        "uniform_share": 1.0 / expert_rows.shape[1],
                        "rows_on_hot_quarter": float(np.sort(expert_rows.ravel())[::-1][: total // 4].sum()
                                                     / expert_rows.sum())},
        "dense_precision": args.dense_precision, "window": args.window, "decode_tokens": args.decode_tokens,
        "rounds": args.rounds,
        "machine": machine_before, "load_average_end": describe_machine(args.threads)["load_average"],
        "results": rows,
    }
    add_trade_off(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_svg(report, args.out.with_suffix(".svg"))
    print(json.dumps(report, indent=2))
    print("| choice | BF16 experts | weights GiB | +mxfp4 draft | +mxfp4-dense draft | decode tok/s | vs all-MXFP4 | "
          "perplexity |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        perplexity = f"{row['perplexity']:.3f}" if "perplexity" in row else "-"
        print(f"| {row['choice']} | {row['bf16_experts']} ({row['fraction']:.3f}) | {row['weight_bytes'] / GIB:.2f} | "
              f"{row['with_mxfp4_draft_over_target']:.3f}x | {row['with_mxfp4_dense_draft_over_target']:.3f}x | "
              f"{row['decode_tokens_per_second']:.2f} | "
              f"{row['decode_vs_all_mxfp4']:.3f}x | {perplexity} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
