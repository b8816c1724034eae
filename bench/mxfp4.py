"""MXFP4 kernels on Qwen2.5-Coder-1.5B shapes: GEMV bandwidth, batch cost time(M)/time(1), cast time.

    python3 bench/run.py mxfp4 [--threads 1 2] [--rounds 40] [--max-m 16] [--skip-cast] [--out FILE]

GEMV bandwidth is MXFP4 bytes read per second at M = 1. Each measurement cycles through enough copies of
the weights to exceed the last-level cache, so the bytes come from memory, as in decoding. A time is the
best of --rounds single calls, the calls of every M and of the baseline interleaved so that they meet
the same conditions (the machine may be shared with other work; medians are in the JSON too, written to
bench/results/mxfp4.json unless --out says otherwise). GEMV is also given as a share of `_native.stream_read`,
a streaming read of the same bytes, where the module has it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import RESULTS
from bench.machine import describe_machine
from mlspecqd import _native
from mlspecqd.engine.quant import cast_to_mxfp4

# (name, N, K) of Qwen2.5-Coder-1.5B's linear layers; 28 layers, untied LM head.
SHAPES = [
    ("attn_q, attn_o", 1536, 1536),
    ("attn_k, attn_v", 256, 1536),
    ("ffn_gate, ffn_up", 8960, 1536),
    ("ffn_down", 1536, 8960),
    ("lm_head", 151936, 1536),
]
LAYER_MATRICES = [(1536, 1536), (256, 1536), (256, 1536), (1536, 1536), (8960, 1536), (8960, 1536), (1536, 8960)]
N_LAYERS = 28
LM_HEAD = (151936, 1536)
CACHE_BUSTING_BYTES = 256 << 20  # well above the 32 MiB L3 of the reference machine


def weight_copies(rng: np.random.Generator, N: int, K: int, total_bytes: int = CACHE_BUSTING_BYTES) -> list[np.ndarray]:
    """At least two copies of one random (N, K) MXFP4 weight, together at least `total_bytes`."""
    blocks = cast_to_mxfp4(rng.standard_normal((N, K), dtype=np.float32) * np.float32(0.02))
    copies = max(2, -(-total_bytes // blocks.nbytes))
    return [blocks] + [blocks.copy() for _ in range(copies - 1)]


def interleaved_times(runs: dict[str, Callable[[np.ndarray], object]], copies: list[np.ndarray],
                      rounds: int) -> dict[str, tuple[float, float]]:
    """Best and median seconds of each run. Every round calls each run once, each call on the next copy
    of the weights, so all runs see the same conditions on a shared machine."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    calls = 0
    for round_index in range(rounds + 1):  # round 0 warms up: pages, allocations
        for key, run in runs.items():
            blocks = copies[calls % len(copies)]
            calls += 1
            start = time.perf_counter()
            run(blocks)
            if round_index:
                times[key].append(time.perf_counter() - start)
    return {key: (min(values), statistics.median(values)) for key, values in times.items()}


def product(x: np.ndarray, N: int, K: int) -> Callable[[np.ndarray], object]:
    y = np.empty((x.shape[0], N), np.float32)  # written in place: no allocation inside the timing
    return lambda blocks: _native.matmul_mxfp4(x, blocks, K, out=y)


def bench_gemm(threads: list[int], rounds: int, max_m: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, N, K in SHAPES:
        copies = weight_copies(rng, N, K)
        nbytes = copies[0].nbytes
        runs = {f"M={M}": product(rng.standard_normal((M, K), dtype=np.float32), N, K) for M in range(1, max_m + 1)}
        if hasattr(_native, "stream_read"):
            runs["stream_read"] = _native.stream_read
        for t in threads:
            _native.set_num_threads(t)
            times = interleaved_times(runs, copies, rounds)
            gemv = times["M=1"][0]
            stream = times["stream_read"][0] if "stream_read" in times else None
            rows.append({
                "matrix": name, "N": N, "K": K, "threads": t, "mxfp4_bytes": nbytes,
                "gemv_s": gemv, "gemv_median_s": times["M=1"][1], "gemv_GBps": nbytes / gemv / 1e9,
                "stream_read_GBps": None if stream is None else nbytes / stream / 1e9,
                "share_of_stream_read": None if stream is None else stream / gemv,
                "time_ratio_by_M": {M: times[f"M={M}"][0] / gemv for M in range(1, max_m + 1)},
                "median_time_ratio_by_M": {M: times[f"M={M}"][1] / times["M=1"][1] for M in range(1, max_m + 1)},
            })
            print_gemm_row(rows[-1], max_m)
        del copies
    return rows


def bench_cast(threads: list[int]) -> list[dict]:
    """The whole model's linear weights from BF16: one layer's matrices cast N_LAYERS times, plus the LM head."""
    rng = np.random.default_rng(1)

    def random_bf16(shape: tuple[int, int]) -> np.ndarray:
        values = (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32)
        return ((values + 0x8000) >> 16).astype(np.uint16)

    layer = [random_bf16(shape) for shape in LAYER_MATRICES]
    head = random_bf16(LM_HEAD)
    values = N_LAYERS * sum(w.size for w in layer) + head.size
    rows = []
    for t in threads:
        _native.set_num_threads(t)
        cast_to_mxfp4(layer[0])
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(N_LAYERS):
                for w in layer:
                    cast_to_mxfp4(w)
            cast_to_mxfp4(head)
            seconds.append(time.perf_counter() - start)
        best = min(seconds)
        rows.append({"threads": t, "values": values, "bf16_bytes": 2 * values, "seconds": best,
                     "median_seconds": statistics.median(seconds), "input_GBps": 2 * values / best / 1e9})
        print(f"cast of all linear weights ({values / 1e9:.2f} G values, BF16 in): {t} thread(s) {best:.2f} s "
              f"({2 * values / best / 1e9:.1f} GB/s of BF16 read)")
    return rows


def print_gemm_row(row: dict, max_m: int) -> None:
    share = "" if row["share_of_stream_read"] is None else f" ({100 * row['share_of_stream_read']:.0f}% of stream_read)"
    ratios = " ".join(f"{row['time_ratio_by_M'][M]:.2f}" for M in range(1, max_m + 1))
    print(f"{row['matrix']:18s} {row['N']:6d} x {row['K']:4d}  {row['threads']}t  GEMV {row['gemv_GBps']:5.1f} GB/s"
          f"{share}  time(M)/time(1), M=1..{max_m}: {ratios}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=40, help="timed calls of each product and of stream_read")
    parser.add_argument("--max-m", type=int, default=16)
    parser.add_argument("--skip-cast", action="store_true")
    parser.add_argument("--out", "--json", dest="json", type=Path, default=RESULTS / "mxfp4.json",
                        help="JSON file (default: bench/results/mxfp4.json)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"isa {_native.active_isa()}, cpu count {os.cpu_count()}, load average {load[0]:.1f} "
          "(other work shares the cores)")
    results = {
        "isa": _native.active_isa(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load[0],
        "gemm": bench_gemm(args.threads, args.rounds, args.max_m),
        "cast": [] if args.skip_cast else bench_cast(args.threads),
        "machine": describe_machine(args.threads),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.json.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2))
    temporary.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
