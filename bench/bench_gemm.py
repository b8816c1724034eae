"""BF16 GEMM on Qwen2.5-Coder-1.5B shapes: GEMV bandwidth next to a streaming read, and batch cost.

    python3 bench/bench_gemm.py [--threads 1 2] [--repeats 9] [--json bench/results/gemm.json]

GEMV bandwidth is weight bytes read per second at M = 1, also given as a share of `stream_read` (the
fastest plain read of memory on the same threads). Batch cost is time(M) / time(1): how much a
verification batch of M rows costs next to one decoding step. Each measurement sweeps enough random
copies of the weight to exceed the last-level cache, so the bytes come from memory, as in decoding.
Times are the median of --repeats sweeps (the best is in the JSON too); the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlspecqd import _native  # noqa: E402

# (name, N, K) of Qwen2.5-Coder-1.5B's linear layers.
SHAPES = [
    ("attn_q, attn_output", 1536, 1536),
    ("attn_k, attn_v", 256, 1536),
    ("ffn_gate, ffn_up", 8960, 1536),
    ("ffn_down", 1536, 8960),
    ("output (LM head)", 151936, 1536),
]
BATCH_SIZES = [*range(1, 17), 32, 64]
CACHE_BUSTING_BYTES = 256 << 20  # well above the 32 MiB L3 of the reference machine


def seconds_per_call(sweep: Callable[[], None], calls_per_sweep: int, repeats: int) -> tuple[float, float]:
    """(median, best) seconds per call over `repeats` sweeps, after one warm-up sweep."""
    sweep()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sweep()
        times.append((time.perf_counter() - start) / calls_per_sweep)
    return statistics.median(times), min(times)


def stream_read_bandwidth(repeats: int) -> tuple[float, float]:
    """(median, best) bytes per second of a streaming read of a buffer far larger than the caches."""
    words = np.random.default_rng(0).integers(0, 2**63, size=CACHE_BUSTING_BYTES // 8, dtype=np.uint64)
    median, best = seconds_per_call(lambda: _native.stream_read(words), 1, repeats)
    return words.nbytes / median, words.nbytes / best


def random_bf16_weights(N: int, K: int, copies: int, rng: np.random.Generator) -> list[np.ndarray]:
    # Finite BF16 patterns of both signs with magnitudes in [2^-7, 1): timing does not depend on values.
    def one() -> np.ndarray:
        weights = rng.integers(0x3C00, 0x3F80, size=(N, K), dtype=np.uint16)
        weights |= rng.integers(0, 2, size=(N, K), dtype=np.uint16) << 15
        return weights

    return [one() for _ in range(copies)]


def bench_shape(name: str, N: int, K: int, threads: list[int], repeats: int, stream: dict[int, float]) -> list[dict]:
    rng = np.random.default_rng(1)
    weight_bytes = N * K * 2
    copies = max(1, -(-CACHE_BUSTING_BYTES // weight_bytes))
    weights = random_bf16_weights(N, K, copies, rng)
    results = []
    for thread_count in threads:
        _native.set_num_threads(thread_count)
        median_seconds, best_seconds = {}, {}
        for M in BATCH_SIZES:
            x = rng.standard_normal((M, K)).astype(np.float32)
            out = np.empty((M, N), np.float32)

            def sweep() -> None:
                for w in weights:
                    _native.matmul_bf16(x, w, out=out)

            median_seconds[M], best_seconds[M] = seconds_per_call(sweep, copies, repeats)
        gemv_bandwidth = weight_bytes / median_seconds[1]
        results.append(
            {
                "shape": name,
                "N": N,
                "K": K,
                "weight_bytes": weight_bytes,
                "threads": thread_count,
                "gemv_bytes_per_second": gemv_bandwidth,
                "gemv_share_of_stream_read": gemv_bandwidth / stream[thread_count],
                "seconds_median": median_seconds,
                "seconds_best": best_seconds,
                "batch_cost": {M: median_seconds[M] / median_seconds[1] for M in BATCH_SIZES},
            }
        )
    return results


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(stream: dict[int, float], rows: list[dict]) -> None:
    print("\nstreaming read: " + ", ".join(f"{t} thread(s) {bw / 1e9:.1f} GB/s" for t, bw in stream.items()))
    shown = [2, 4, 8, 9, 12, 16, 32, 64]
    print("\n| shape | N | K | threads | M=1 us | GB/s | of stream | " + " | ".join(f"M={M}" for M in shown) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(shown))
    for row in rows:
        cost = row["batch_cost"]
        print(
            f"| {row['shape']} | {row['N']} | {row['K']} | {row['threads']} | {row['seconds_median'][1] * 1e6:.0f} | "
            f"{row['gemv_bytes_per_second'] / 1e9:.1f} | {row['gemv_share_of_stream_read']:.0%} | "
            + " | ".join(f"{cost[M]:.2f}" for M in shown)
            + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--isa", choices=_native.supported_isas(), default=_native.best_isa())
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "gemm.json")
    args = parser.parse_args()
    _native.set_isa(args.isa)

    stream, stream_best = {}, {}
    for thread_count in args.threads:
        _native.set_num_threads(thread_count)
        stream[thread_count], stream_best[thread_count] = stream_read_bandwidth(args.repeats)
    rows = []
    for name, N, K in SHAPES:
        rows += bench_shape(name, N, K, args.threads, args.repeats, stream)
        print(f"{name}: done", file=sys.stderr)

    report = {
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "cpu_features": _native.cpu_features()},
        "module": _native.__file__,
        "isa": args.isa,
        "repeats": args.repeats,
        "stream_read_bytes_per_second": stream,
        "stream_read_bytes_per_second_best": stream_best,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print_table(stream, rows)
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
