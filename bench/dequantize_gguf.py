"""Time to dequantize every tensor of a GGUF file, per thread count.

Native dequantization to BF16 and to float32, and optionally gguf-py's NumPy reference. Prints JSON (also
written to bench/results/dequantize_gguf.json unless --out says otherwise), then a markdown table.

    python3 bench/run.py dequantize_gguf [MODEL.gguf] [--threads 1 2] [--repeats 3] [--reference] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from gguf.quants import dequantize as reference_dequantize

from bench import RESULTS
from bench.machine import describe_machine
from mlspecqd import _native, hub
from mlspecqd.gguf import open_gguf

MODELS_DIR = hub.cache_dir()
DEFAULT_MODEL = MODELS_DIR / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def time_whole_file(model, to_bf16: bool) -> float:
    start = time.perf_counter()
    for name in model.tensors:
        values = model.tensor_bf16(name) if to_bf16 else model.tensor_f32(name)
        del values  # one tensor at a time, as a loader converting weights would hold them
    return time.perf_counter() - start


def time_reference(model) -> float:
    start = time.perf_counter()
    for info in model.tensors.values():
        with np.errstate(all="ignore"):
            reference_dequantize(info.raw.reshape(1, -1), info.ggml_type)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also time gguf.quants (NumPy, single-threaded; slow)")
    parser.add_argument("--out", type=Path, default=RESULTS / "dequantize_gguf.json",
                        help="JSON file (default: bench/results/dequantize_gguf.json)")
    args = parser.parse_args()

    rows = []
    with open_gguf(args.model) as model:
        n_elements = sum(info.n_elements for info in model.tensors.values())
        time_whole_file(model, to_bf16=True)  # warm-up: pull the file into the page cache
        for threads in args.threads:
            _native.set_num_threads(threads)
            for output, to_bf16 in (("bf16", True), ("f32", False)):
                times = [time_whole_file(model, to_bf16) for _ in range(args.repeats)]
                rows.append({"implementation": "native", "output": output, "threads": threads,
                             "best_s": min(times), "median_s": statistics.median(times)})
        if args.reference:
            seconds = time_reference(model)
            rows.append(
                {"implementation": "gguf.quants", "output": "f32", "threads": 1, "best_s": seconds, "median_s": seconds}
            )

    result = {"model": args.model.name, "elements": n_elements, "machine": describe_machine(args.threads),
              "cpus_available": len(os.sched_getaffinity(0)), "isa": _native.active_isa(), "runs": rows}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"Dequantizing all of {args.model.name} ({n_elements / 1e9:.2f} G values)")
    print()
    print("| implementation | output | threads | best s | median s | G values/s (best) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        rate = n_elements / row["best_s"] / 1e9
        cells = [row["implementation"], row["output"], row["threads"], f"{row['best_s']:.2f}", f"{row['median_s']:.2f}"]
        print("| " + " | ".join(str(cell) for cell in cells) + f" | {rate:.2f} |")


if __name__ == "__main__":
    main()
