"""Decode, verification-batch and prompt speed of the native decoder, next to llama.cpp on the same model.

    python3 bench/run.py decode [--model GGUF] [--precision bf16|mxfp4] [--threads 2] [--no-llama-cpp]
                                [--llama-cpp-model GGUF] [--interleave ROUNDS] [--out FILE]

Default model: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) upcast to BF16 at load. Measures
  - decode: tokens/s of one-token forwards after a 512-token prompt;
  - verification: time of a forward of K + 1 tokens relative to a one-token forward, K = 1..16;
  - prompt: tokens/s of one 512-token forward from position 0.
If llama.cpp is built (bench/llamacpp.py), its own BF16 or MXFP4 copy of the same model (or the file
--llama-cpp-model names, e.g. the --model file itself when that is BF16 already) is measured with
-t THREADS -p 512 -n 32 and the ratios printed. With --interleave ROUNDS, decode is also measured in
rounds that alternate the two engines: 32 one-token forwards after the 512-token prompt, then llama-bench
-n 32 -d 512 (the same depth), so that both meet the same machine state. Prints JSON (also written to
bench/results/decode.json), then a markdown table.
Goals: decode >= 0.95x llama.cpp tg, a 9-token forward <= 1.3x a 1-token forward, prompt >= llama.cpp pp512.

The machine may be shared: other processes slow some samples down by large factors. Every rate is
therefore given as the best sample (the least disturbed) and, for decode, also as the median; the
load average at the start and end is recorded with the results. Batch costs are medians of ratios
taken within pairs (a one-token forward, then the K+1-token one), since the memory bandwidth of these
machines drifts over minutes and with it the ratio: it is higher when memory is fast.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS, llamacpp
from bench.machine import describe_machine
from mlspecqd import _native, hub
from mlspecqd.engine.kernel_choice import ROW_CLASSES, KernelChoice, KernelPlan
from mlspecqd.engine.model import Model

DEFAULT_MODEL = hub.cache_dir() / hub.NAMED_MODELS[hub.DEFAULT_MODEL].filename
PROMPT_TOKENS = 512


def seconds(run: Any) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure_native(model: Model, decode_tokens: int, max_k: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 20000, PROMPT_TOKENS)
    continuation = rng.integers(100, 20000, decode_tokens + max_k + 1)

    model.forward(prompt[:16], 0)  # warm-up: first touch of the weights and buffers
    prompt_seconds = min(seconds(lambda: model.forward(prompt, 0)) for _ in range(repeats))

    model.forward(prompt, 0)
    decode_times = [seconds(lambda i=i: model.forward(continuation[i : i + 1], PROMPT_TOKENS + i))
                    for i in range(decode_tokens)]
    one_token = min(decode_times)

    # Each K+1-token forward is timed right after a one-token forward, and the ratio taken within
    # the pair: the machine's memory bandwidth drifts within minutes, and a ratio of two bests taken
    # at different moments can mix two speeds. Median over repeats.
    ratios: dict[int, list[float]] = {k: [] for k in range(1, max_k + 1)}
    batch_seconds: dict[int, list[float]] = {k: [] for k in range(1, max_k + 1)}
    for _ in range(repeats):
        for k in range(1, max_k + 1):
            single = seconds(lambda: model.forward(continuation[:1], PROMPT_TOKENS))
            batch = seconds(lambda k=k: model.forward(continuation[: k + 1], PROMPT_TOKENS, all_logits=True))
            batch_seconds[k].append(batch)
            ratios[k].append(batch / single)
    return {
        "prompt_tokens_per_second": PROMPT_TOKENS / prompt_seconds,
        "decode_tokens_per_second": 1.0 / one_token,
        "decode_tokens_per_second_median": 1.0 / statistics.median(decode_times),
        "decode_ms": 1e3 * one_token,
        "verify_ms": {k: 1e3 * statistics.median(s) for k, s in batch_seconds.items()},
        "verify_ratio_to_one_token": {k: statistics.median(r) for k, r in ratios.items()},
    }


def measure_llama_cpp(source: Path, precision: str, threads: int, model: Path | None) -> dict[str, Any] | None:
    """llama-bench on `model`, by default llama.cpp's own copy of `source` at the same precision
    (bench/llamacpp.py)."""
    if not llamacpp.available():
        return None
    model = model or llamacpp.quantized_copy(source, precision)
    out = subprocess.run([str(llamacpp.BIN / "llama-bench"), "-m", str(model), "-t", str(threads),
                          "-p", str(PROMPT_TOKENS), "-n", "32", "-o", "json"],
                         check=True, capture_output=True, text=True).stdout
    rows = {("prompt" if row["n_prompt"] else "decode"): row for row in json.loads(out)}
    return {
        "model": str(model),
        "prompt_tokens_per_second": max(rows["prompt"]["samples_ts"]),
        "decode_tokens_per_second": max(rows["decode"]["samples_ts"]),
        "prompt_tokens_per_second_mean": rows["prompt"]["avg_ts"],
        "decode_tokens_per_second_mean": rows["decode"]["avg_ts"],
    }


def llama_bench_decode_at_depth(model: Path, threads: int, tokens: int, folder: Path | None = None) -> float:
    """llama-bench's decode rate (tokens/s) for `tokens` tokens after PROMPT_TOKENS cached ones, one repetition,
    by the build in `folder` (default: llamacpp.BIN)."""
    out = subprocess.run([str((folder or llamacpp.BIN) / "llama-bench"), "-m", str(model), "-t", str(threads),
                          "-p", "0", "-n", str(tokens), "-d", str(PROMPT_TOKENS), "-r", "1", "-o", "json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]["avg_ts"]


def decode_rate(model: Model, continuation: np.ndarray, depth: int) -> float:
    """Tokens/s of one-token forwards of `continuation` at positions depth, depth + 1, ... (the cache holds
    `depth` tokens already)."""
    elapsed = sum(seconds(lambda i=i: model.forward(continuation[i : i + 1], depth + i))
                  for i in range(len(continuation)))
    return len(continuation) / elapsed


def interleaved_decode(model: Model, llama_model: Path, threads: int, tokens: int, rounds: int) -> dict[str, Any]:
    """Decode rates after a PROMPT_TOKENS-token prompt, mlspecqd and llama-bench taking turns round by round:
    on a shared machine the load and the memory speed change within seconds, so two runs minutes apart
    compare two machines, while a ratio within a round compares the engines. Median of the per-round ratios."""
    rng = np.random.default_rng(1)
    prompt, continuation = rng.integers(100, 20000, PROMPT_TOKENS), rng.integers(100, 20000, tokens)
    rows = []
    for _ in range(rounds):
        model.forward(prompt, 0)
        ours = decode_rate(model, continuation, PROMPT_TOKENS)
        theirs = llama_bench_decode_at_depth(llama_model, threads, tokens)
        rows.append({"mlspecqd": ours, "llama_cpp": theirs, "load_average_1min": os.getloadavg()[0]})
    return {
        "rounds": rows,
        "mlspecqd_median": statistics.median(row["mlspecqd"] for row in rows),
        "llama_cpp_median": statistics.median(row["llama_cpp"] for row in rows),
        "median_ratio": statistics.median(row["mlspecqd"] / row["llama_cpp"] for row in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--isa", default=None, help="pin mlspecqd's kernel table (scalar, avx2, avxvnni, avx512, amx): "
                                                    "avx2 stands in for AI PCs without AVX-512")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "mxfp4"),
                        help="mxfp4: the linear layers and LM head cast (the self-draft), vs llama.cpp's MXFP4 copy")
    parser.add_argument("--mxfp4-activations", default="bf16", choices=("bf16", "int8"),
                        help="with --precision mxfp4: int8 multiplies activations quantized per block of 32 "
                             "(W4A8, as llama.cpp's MXFP4 kernels), at every row count")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--max-k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5,
                        help="prompt: best of this many; batches: median of this many")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the llama-bench comparison")
    parser.add_argument("--llama-cpp-model", type=Path, default=None,
                        help="the GGUF llama-bench runs (default: llama-quantize's copy of --model at --precision)")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="also measure decode at depth 512 in this many rounds alternating the two engines")
    parser.add_argument("--out", "--json-out", dest="out", type=Path, default=RESULTS / "decode.json",
                        help="JSON file (default: bench/results/decode.json)")
    args = parser.parse_args(argv)

    _native.set_num_threads(args.threads)
    if args.isa is not None:
        _native.set_isa(args.isa)
    load_before = os.getloadavg()[0]
    context = PROMPT_TOKENS + args.decode_tokens + args.max_k + 8
    model = Model.load(args.model, precision=args.precision, context_length=context)
    model.set_kernel_plan(KernelPlan((KernelChoice(_native.active_isa(), args.mxfp4_activations),) * len(ROW_CLASSES)))
    native = measure_native(model, args.decode_tokens, args.max_k, args.repeats)
    interleaved = None
    if args.interleave and not args.no_llama_cpp and llamacpp.available():
        llama_model = args.llama_cpp_model or llamacpp.quantized_copy(args.model, args.precision)
        interleaved = interleaved_decode(model, llama_model, args.threads, args.decode_tokens, args.interleave)
    model.close()
    del model
    llama = None if args.no_llama_cpp else measure_llama_cpp(args.model, args.precision, args.threads,
                                                             args.llama_cpp_model)

    report: dict[str, Any] = {
        "benchmark": "decode", "model": str(args.model), "precision": args.precision,
        "mxfp4_activations": args.mxfp4_activations, "threads": args.threads,
        "isa": _native.active_isa(), "machine": describe_machine(args.threads), "native": native, "llama_cpp": llama,
        # other processes on the machine make every timing slower and noisier: keep the load with them
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
    }
    if interleaved:
        report["interleaved_decode"] = interleaved
    if llama:
        report["ratios"] = {
            "decode_vs_llama_cpp_tg": native["decode_tokens_per_second"] / llama["decode_tokens_per_second"],
            "prompt_vs_llama_cpp_pp512": native["prompt_tokens_per_second"] / llama["prompt_tokens_per_second"],
        }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"| measure ({args.threads} threads, best sample) | mlspecqd | llama.cpp {args.precision.upper()} | ratio |")
    print("|---|---|---|---|")
    for label, key in (("decode tok/s", "decode_tokens_per_second"),
                       (f"prompt tok/s (pp{PROMPT_TOKENS})", "prompt_tokens_per_second")):
        theirs = f"{llama[key]:.1f}" if llama else "-"
        ratio = f"{native[key] / llama[key]:.2f}x" if llama else "-"
        print(f"| {label} | {native[key]:.1f} | {theirs} | {ratio} |")
    if interleaved:
        print(f"| decode tok/s at depth {PROMPT_TOKENS}, {args.interleave} alternating rounds (medians) "
              f"| {interleaved['mlspecqd_median']:.1f} | {interleaved['llama_cpp_median']:.1f} "
              f"| {interleaved['median_ratio']:.2f}x |")
    print()
    print("| K | forward of K+1 tokens (ms, median) | vs 1 token (median of paired ratios) |")
    print("|---|---|---|")
    for k, ms in native["verify_ms"].items():
        print(f"| {k} | {ms:.1f} | {native['verify_ratio_to_one_token'][k]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
