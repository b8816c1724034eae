"""Every product path this CPU runs on Qwen2.5-Coder-1.5B's shapes, and the 1.5B's decode next to llama.cpp.

    python3 bench/run.py kernels [--isas avx2 avx512 amx] [--rows 1 2 4 9 16 64] [--threads 2] [--repeats 5]
                                 [--shapes NxK ...] [--decode [--rounds 3] [--decode-tokens 32]] [--out FILE]

A path is a kernel table (--isas: default every table this CPU runs but scalar) with one weight type:
  - bf16:          BF16 weights (2 bytes a value), BF16 activations (matmul_bf16);
  - mxfp4 x bf16:  MXFP4 weights (17 bytes per 32 values), BF16 activations (matmul_mxfp4);
  - mxfp4 x int8:  MXFP4 weights, activations quantized to int8 per block of 32
                   (matmul_mxfp4(..., activations="int8")).
For each path, shape and row count M (bench/gemm.py's bench_shape): seconds per product with the weights
coming from memory (each timing sweeps random copies of the weight larger together than the last-level
cache), GB/s of weight bytes, that rate as a share of `stream_read` measured in the same repeat, and the
batch cost time(M) / time(1) taken within a repeat. Medians over repeats.

With --decode, the real 1.5B (bench/decode.py's default GGUF file) decodes on every path (the model's kernel
plan: that table and those activations at every row count; MXFP4: the linear layers and LM head cast at load)
next to llama-bench of llama.cpp's native and AVX2 builds (bench/llamacpp.py) on llama.cpp's BF16 and MXFP4
copies of the same file: --decode-tokens one-token forwards after a 512-token prompt (llama-bench -d 512), the
engines taking turns within each of --rounds rounds; medians of rates and of within-round ratios. A llama.cpp
build that is not there is skipped with a note.

Writes bench/results/kernels.json (with the machine: CPU model and flags, load at start and end), then
prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS, decode, gemm, llamacpp, mxfp4
from bench.machine import describe_machine
from mlspecqd import _native
from mlspecqd.engine.kernel_choice import ROW_CLASSES, KernelChoice, KernelPlan
from mlspecqd.engine.model import Model

ROWS = [1, 2, 4, 9, 16, 64]
STORAGES = ["bf16", "mxfp4"]  # how weights are stored: the model's precision at load, llama.cpp's copy
MXFP4_BLOCK = 32  # values per MXFP4 block: K must be a multiple


def multiply_mxfp4(x: np.ndarray, blocks: np.ndarray, out: np.ndarray) -> None:
    _native.matmul_mxfp4(x, blocks, x.shape[1], out=out)


def multiply_mxfp4_int8(x: np.ndarray, blocks: np.ndarray, out: np.ndarray) -> None:
    _native.matmul_mxfp4(x, blocks, x.shape[1], out=out, activations="int8")


def path_name(weights: str, activations: str) -> str:
    return weights if weights == activations else f"{weights} x {activations}"


@dataclass(frozen=True)
class WeightType:
    """How a path stores its weights and which product it runs on them."""

    weights: str
    activations: str
    multiply: gemm.Multiply

    @property
    def name(self) -> str:
        return path_name(self.weights, self.activations)


WEIGHT_TYPES = [WeightType("bf16", "bf16", gemm.multiply_bf16), WeightType("mxfp4", "bf16", multiply_mxfp4),
                WeightType("mxfp4", "int8", multiply_mxfp4_int8)]


def random_weights(storage: str, N: int, K: int, total_bytes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Copies of one random (N, K) weight stored as `storage` ("bf16" or "mxfp4"), together >= total_bytes."""
    if storage == "bf16":
        return gemm.random_bf16_weights(N, K, max(1, -(-total_bytes // (N * K * 2))), rng)
    return mxfp4.weight_copies(rng, N, K, total_bytes)


def measure_products(shapes: list[tuple[str, int, int]], isas: list[str], rows: list[int], threads: list[int],
                     repeats: int, cache_bytes: int) -> list[dict[str, Any]]:
    """bench_shape's figures for every shape x weight type x table x thread count, labelled with the path."""
    stream_words = np.random.default_rng(0).integers(0, 2**63, size=cache_bytes // 8, dtype=np.uint64)
    results = []
    for name, N, K in shapes:
        for storage in STORAGES:
            weights = random_weights(storage, N, K, cache_bytes, np.random.default_rng(1))
            for weight_type in (t for t in WEIGHT_TYPES if t.weights == storage):
                for isa in isas:
                    _native.set_isa(isa)
                    for thread_count in threads:
                        row = gemm.bench_shape(name, weights, thread_count, repeats, stream_words, K=K,
                                               multiply=weight_type.multiply, batch_sizes=rows)
                        results.append({"isa": isa, "weights": weight_type.weights,
                                        "activations": weight_type.activations, **row})
                        print(f"{name} {N}x{K}, {isa} {weight_type.name}, {thread_count} thread(s): "
                              f"{row['gemv_bytes_per_second'] / 1e9:.1f} GB/s", file=sys.stderr, flush=True)
            del weights
    return results


def measure_decode(model_path: Path, isas: list[str], threads: int, tokens: int, rounds: int,
                   llama_builds: dict[str, Path]) -> dict[str, Any]:
    """Decode rates (tokens/s) of `tokens` one-token forwards after a PROMPT_TOKENS-token prompt. The model is
    loaded once per storage (BF16, MXFP4); each round runs every weight type of that storage on every table
    (the model's kernel plan: that table and those activations at every row count), then llama-bench of every
    build there is on llama.cpp's copy at that storage (-d PROMPT_TOKENS, the same depth). Medians over rounds;
    ratios of ours to each build are taken within a round (the machine's load and memory speed drift)."""
    _native.set_num_threads(threads)
    builds = {build: folder for build, folder in llama_builds.items() if llamacpp.available(folder)}
    skipped = [{"llama_cpp_build": build, "reason": f"llama.cpp's tools are not in {folder}"}
               for build, folder in llama_builds.items() if build not in builds]
    rng = np.random.default_rng(1)
    prompt, continuation = rng.integers(100, 20000, decode.PROMPT_TOKENS), rng.integers(100, 20000, tokens)
    by_storage = {}
    for storage in STORAGES:
        ours = [(t, isa) for t in WEIGHT_TYPES if t.weights == storage for isa in isas]
        model = Model.load(model_path, precision=storage, context_length=decode.PROMPT_TOKENS + tokens + 8)
        copy = llamacpp.quantized_copy(model_path, storage) if builds else None
        model.forward(prompt, 0)  # the cache holds the prompt for every table: the tables share its layout
        measured = []
        for _ in range(rounds):
            rates = {}
            for weight_type, isa in ours:
                _native.set_isa(isa)
                model.set_kernel_plan(KernelPlan((KernelChoice(isa, weight_type.activations),) * len(ROW_CLASSES)))
                rates[engine_name(isa, weight_type)] = decode.decode_rate(model, continuation, decode.PROMPT_TOKENS)
            for build, folder in builds.items():
                rates[f"llama.cpp {build}"] = decode.llama_bench_decode_at_depth(copy, threads, tokens, folder)
            measured.append({"tokens_per_second": rates, "load_average_1min": os.getloadavg()[0]})
            print(f"decode {storage}: " + ", ".join(f"{engine} {rate:.2f}" for engine, rate in rates.items()),
                  file=sys.stderr, flush=True)
        model.close()
        del model
        engines = list(measured[0]["tokens_per_second"])
        by_storage[storage] = {
            "llama_cpp_model": None if copy is None else str(copy),
            "rounds": measured,
            "tokens_per_second_median": {
                engine: statistics.median(r["tokens_per_second"][engine] for r in measured) for engine in engines},
            "mlspecqd_vs_llama_cpp": {
                engine_name(isa, t): {
                    build: statistics.median(r["tokens_per_second"][engine_name(isa, t)]
                                             / r["tokens_per_second"][f"llama.cpp {build}"] for r in measured)
                    for build in builds}
                for t, isa in ours},
        }
    return {"model": str(model_path), "threads": threads, "prompt_tokens": decode.PROMPT_TOKENS,
            "decode_tokens": tokens, "rounds": rounds, "llama_cpp_builds": {b: str(f) for b, f in builds.items()},
            "skipped": skipped, "weights": by_storage}


def engine_name(isa: str, weight_type: WeightType) -> str:
    return f"mlspecqd {isa} {weight_type.name}"


def print_products(results: list[dict[str, Any]], rows: list[int]) -> None:
    more = [M for M in rows if M != 1]
    print("\nGB/s: weight bytes per second at M = 1; stream: that rate over stream_read's in the same repeat; "
          "M columns: time(M) / time(1). Medians over repeats.\n")
    print("| shape | N x K | table | weights | threads | M=1 us | GB/s | of stream | "
          + " | ".join(f"M={M}" for M in more) + " |")
    print("|---|---|---|---|---:|---:|---:|---:|" + "---:|" * len(more))
    for row in results:
        print(f"| {row['shape']} | {row['N']} x {row['K']} | {row['isa']} | "
              f"{path_name(row['weights'], row['activations'])} | {row['threads']} | "
              f"{row['seconds_median'][1] * 1e6:.0f} | {row['bytes_per_second_median'][1] / 1e9:.1f} | "
              f"{row['share_of_stream_read'][1]:.0%} | "
              + " | ".join(f"{row['batch_cost'][M]:.2f}" for M in more) + " |")


def print_decode(result: dict[str, Any]) -> None:
    builds = list(result["llama_cpp_builds"])
    print(f"\nDecode of {Path(result['model']).name}, {result['threads']} threads: {result['decode_tokens']} "
          f"tokens after {result['prompt_tokens']}, tokens/s, medians of {result['rounds']} rounds; "
          "llama.cpp on its copy with the same weights (BF16 or MXFP4).\n")
    print("| weights | engine | tok/s | " + " | ".join(f"vs llama.cpp {build}" for build in builds) + " |")
    print("|---|---|---:|" + "---:|" * len(builds))
    for storage, entry in result["weights"].items():
        for engine, rate in entry["tokens_per_second_median"].items():
            ratios = entry["mlspecqd_vs_llama_cpp"].get(engine, {})
            print(f"| {storage} | {engine} | {rate:.2f} | "
                  + " | ".join(f"{ratios[build]:.2f}x" if build in ratios else "" for build in builds) + " |")
    for note in result["skipped"]:
        print(f"\nskipped llama.cpp {note['llama_cpp_build']}: {note['reason']}")


def shape_argument(text: str) -> tuple[str, int, int]:
    """`NxK` -> (name, N, K), the name of the 1.5B's matrices of that shape where there are some."""
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"a shape is NxK with positive N and K, not {text!r}")
    N, K = int(match.group(1)), int(match.group(2))
    if K % MXFP4_BLOCK:
        raise argparse.ArgumentTypeError(f"{text}: K = {K} is not a multiple of the MXFP4 block ({MXFP4_BLOCK})")
    names = [name for name, n, k in gemm.SHAPES if (n, k) == (N, K)]
    return (names[0] if names else text, N, K)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    supported = _native.supported_isas()
    parser.add_argument("--isas", nargs="+", default=[isa for isa in supported if isa != "scalar"],
                        help=f"kernel tables (this CPU runs {' '.join(supported)}; default all but scalar)")
    parser.add_argument("--rows", type=int, nargs="+", default=ROWS, help="row counts M (must hold 1)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", type=shape_argument, nargs="+", default=gemm.SHAPES, metavar="NxK",
                        help="weight shapes (default: the 1.5B's linear layers and LM head)")
    parser.add_argument("--cache-busting-mib", type=int, default=gemm.CACHE_BUSTING_BYTES >> 20,
                        help="weight copies swept per timing, and stream_read's buffer, in MiB")
    parser.add_argument("--decode", action="store_true", help="also decode the real 1.5B next to llama.cpp")
    parser.add_argument("--model", type=Path, default=decode.DEFAULT_MODEL)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="decode rounds, each engine once per round")
    parser.add_argument("--llama-cpp-native", type=Path, default=llamacpp.BIN, help="llama.cpp native build's bin")
    parser.add_argument("--llama-cpp-avx2", type=Path, default=llamacpp.AVX2_BIN, help="llama.cpp AVX2 build's bin")
    parser.add_argument("--out", type=Path, default=RESULTS / "kernels.json")
    args = parser.parse_args(argv)
    for isa in args.isas:
        if isa not in supported:
            parser.error(f"--isas: this CPU does not run the {isa} table (it runs {' '.join(supported)})")
    if 1 not in args.rows or min(args.rows) < 1:
        parser.error(f"--rows: positive row counts including 1 (the base of the batch costs), not {args.rows}")
    if min(args.repeats, *args.threads, args.cache_busting_mib, args.decode_tokens, args.rounds) < 1:
        parser.error("--repeats, --threads, --cache-busting-mib, --decode-tokens and --rounds must be positive")

    machine = describe_machine(args.threads)
    rows = sorted(set(args.rows))
    report: dict[str, Any] = {
        "benchmark": "kernels",
        "machine": machine,
        "isas": args.isas,
        "rows": rows,
        "repeats": args.repeats,
        "cache_busting_bytes": args.cache_busting_mib << 20,
        "weight_bytes_per_value": {"bf16": 2, "mxfp4": 17 / 32},
        "products": measure_products(args.shapes, args.isas, rows, args.threads, args.repeats,
                                     args.cache_busting_mib << 20),
    }
    if args.decode:
        builds = {"native": args.llama_cpp_native, "avx2": args.llama_cpp_avx2}
        report["decode"] = measure_decode(args.model, args.isas, max(args.threads), args.decode_tokens, args.rounds,
                                          builds)
    report["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    print_products(report["products"], rows)
    if args.decode:
        print_decode(report["decode"])
    print(f"\nload average: start {machine['load_average'][0]:.2f}, end {report['load_average_end'][0]:.2f}; "
          f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
