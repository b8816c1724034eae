"""BF16 GEMM on Qwen2.5-Coder-1.5B shapes: GEMV bandwidth next to a streaming read, and batch cost.

    python3 bench/run.py gemm [--threads 1 2] [--repeats 9] [--isa avx512] [--out FILE]

GEMV bandwidth is weight bytes read per second at M = 1, also given as a share of `stream_read` (a
plain read of a buffer far larger than the caches, on the same threads). Batch cost is
time(M) / time(1): what a verification batch of M rows costs next to one decoding step. Each
measurement sweeps enough random copies of the weight to exceed the last-level cache, so the bytes
come from memory, as in decoding.

The machine may be shared, and its load drifts. So each repeat measures the streaming read and every
M back to back, ratios are taken within a repeat, and the table shows medians over repeats (the JSON,
bench/results/gemm.json unless --out says otherwise, also has the best times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench import RESULTS
from bench.machine import describe_machine
from mlspecqd import _native

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


def timed(sweep: Callable[[], None]) -> float:
    start = time.perf_counter()
    sweep()
    return time.perf_counter() - start


def random_bf16_weights(N: int, K: int, copies: int, rng: np.random.Generator) -> list[np.ndarray]:
    # Finite BF16 patterns of both signs with magnitudes in [2^-7, 1): timing does not depend on values.
    def one() -> np.ndarray:
        weights = rng.integers(0x3C00, 0x3F80, size=(N, K), dtype=np.uint16)
        weights |= rng.integers(0, 2, size=(N, K), dtype=np.uint16) << 15
        return weights

    return [one() for _ in range(copies)]


# A product y = x @ W.T written into out, W given in its stored form (BF16 bits, MXFP4 blocks, ...).
Multiply = Callable[[np.ndarray, np.ndarray, np.ndarray], object]


def multiply_bf16(x: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    _native.matmul_bf16(x, weights, out=out)


def bench_shape(
    name: str,
    weights: list[np.ndarray],
    thread_count: int,
    repeats: int,
    stream_words: np.ndarray,
    *,
    K: int | None = None,
    multiply: Multiply = multiply_bf16,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> dict:
    """Times of `multiply` for each M of `batch_sizes` (which holds 1, the base of the batch costs) on copies of
    one (N, K) weight (K: the weight's second dimension unless given, as for packed formats), next to
    `stream_read` in every repeat."""
    rng = np.random.default_rng(2)
    N = weights[0].shape[0]
    K = weights[0].shape[1] if K is None else K
    weight_bytes = weights[0].nbytes
    copies = len(weights)
    _native.set_num_threads(thread_count)

    def stream_sweep() -> None:
        _native.stream_read(stream_words)

    def gemm_sweep(M: int) -> Callable[[], None]:
        x = rng.standard_normal((M, K)).astype(np.float32)
        out = np.empty((M, N), np.float32)

        def sweep() -> None:
            for w in weights:
                multiply(x, w, out)

        return sweep

    sweeps = {M: gemm_sweep(M) for M in batch_sizes}
    for sweep in (stream_sweep, *sweeps.values()):  # warm up: first touches, page faults
        sweep()
    stream_seconds, seconds = [], {M: [] for M in batch_sizes}  # per call, per repeat
    for _ in range(repeats):
        stream_seconds.append(timed(stream_sweep))
        for M, sweep in sweeps.items():
            seconds[M].append(timed(sweep) / copies)

    stream_bandwidth = [stream_words.nbytes / s for s in stream_seconds]
    bandwidth = {M: [weight_bytes / s for s in seconds[M]] for M in batch_sizes}
    return {
        "shape": name,
        "N": N,
        "K": K,
        "weight_bytes": weight_bytes,
        "threads": thread_count,
        "stream_read_bytes_per_second": statistics.median(stream_bandwidth),
        "gemv_bytes_per_second": statistics.median(bandwidth[1]),
        "gemv_bytes_per_second_best": max(bandwidth[1]),
        "gemv_share_of_stream_read": statistics.median(g / s for g, s in zip(bandwidth[1], stream_bandwidth)),
        "seconds_median": {M: statistics.median(seconds[M]) for M in batch_sizes},
        "seconds_best": {M: min(seconds[M]) for M in batch_sizes},
        "bytes_per_second_median": {M: statistics.median(bandwidth[M]) for M in batch_sizes},
        "share_of_stream_read": {
            M: statistics.median(b / s for b, s in zip(bandwidth[M], stream_bandwidth)) for M in batch_sizes},
        "batch_cost": {M: statistics.median(t / t1 for t, t1 in zip(seconds[M], seconds[1])) for M in batch_sizes},
    }


def print_table(rows: list[dict]) -> None:
    shown = [2, 4, 8, 9, 12, 16, 32, 64]
    print("\nBatch cost columns: time(M) / time(1).\n")
    print(
        "| shape | N | K | threads | M=1 us | GB/s | stream GB/s | of stream | "
        + " | ".join(f"M={M}" for M in shown)
        + " |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(shown))
    for row in rows:
        cost = row["batch_cost"]
        print(
            f"| {row['shape']} | {row['N']} | {row['K']} | {row['threads']} | {row['seconds_median'][1] * 1e6:.0f} | "
            f"{row['gemv_bytes_per_second'] / 1e9:.1f} | {row['stream_read_bytes_per_second'] / 1e9:.1f} | "
            f"{row['gemv_share_of_stream_read']:.0%} | " + " | ".join(f"{cost[M]:.2f}" for M in shown) + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--isa", choices=_native.supported_isas(), default=_native.best_isa())
    parser.add_argument("--out", "--json", dest="json", type=Path, default=RESULTS / "gemm.json",
                        help="JSON file (default: bench/results/gemm.json)")
    args = parser.parse_args()
    _native.set_isa(args.isa)

    stream_words = np.random.default_rng(0).integers(0, 2**63, size=CACHE_BUSTING_BYTES // 8, dtype=np.uint64)
    rows = []
    for name, N, K in SHAPES:
        copies = max(1, -(-CACHE_BUSTING_BYTES // (N * K * 2)))
        weights = random_bf16_weights(N, K, copies, np.random.default_rng(1))
        for thread_count in args.threads:
            rows.append(bench_shape(name, weights, thread_count, args.repeats, stream_words))
            print(f"{name}, {thread_count} thread(s): done", file=sys.stderr)
        del weights

    report = {
        "machine": describe_machine(args.threads),
        "module": _native.__file__,
        "isa": args.isa,
        "repeats": args.repeats,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print_table(rows)
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
