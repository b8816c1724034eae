"""A real-size MoE whose BF16 copy does not fit the memory budget, loaded at precision "bf16": its experts
stay MXFP4 (views of the mapped file), the rest is upcast to BF16; peak resident memory.

    python3 bench/run.py moe_memory [--layers 6] [--memory-budget-gib 4] [--threads 2] [--out FILE]

The file is bench/moe_forward.py's (Qwen3-30B-A3B layer shapes, --layers of them, MXFP4 attention,
experts and LM head; written to the model cache if missing). `Model.load(path, memory_budget=...)` with
a budget below the BF16 copy's size / 0.8 (mlspecqd.engine.model.experts_fit_in_bf16), then a 16-token
forward, which reads every layer's router and some experts. Reported: the file's and the BF16 copy's
sizes, the load time, the resident memory after loading and after the forward (anonymous: copies;
file: mapped pages read), and the process's peak. Prints JSON (also written to
bench/results/moe_memory.json unless --out says otherwise).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS
from bench.machine import describe_machine
from bench.moe_forward import model_file
from mlspecqd import _native
from mlspecqd.engine.model import Model, bf16_weight_bytes
from mlspecqd.gguf import open_gguf

GIB = 2**30


def resident_gib() -> dict[str, float]:
    """This process's resident memory now, by kind (/proc/self/status, kB)."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024 / GIB
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--memory-budget-gib", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "moe_memory.json")
    args = parser.parse_args(argv)

    path = model_file(args.layers)
    with open_gguf(path) as gguf_file:
        bf16_bytes = bf16_weight_bytes(gguf_file)
    _native.set_num_threads(args.threads)
    budget = int(args.memory_budget_gib * GIB)
    started = time.perf_counter()
    model = Model.load(path, context_length=256, memory_budget=budget)
    load_seconds = time.perf_counter() - started
    after_load = resident_gib()
    model.forward(np.arange(100, 116), 0)
    experts = [name for name in model.tensors if name.endswith("_exps.weight")]
    result: dict[str, Any] = {
        "machine": describe_machine(args.threads),
        "model": {"file": str(path), "layers": args.layers, "file_gib": path.stat().st_size / GIB,
                  "bf16_copy_gib": bf16_bytes / GIB},
        "memory_budget_gib": budget / GIB,
        "experts_mxfp4": all(model.tensors[name].dtype == np.uint8 for name in experts),
        "attention_bf16": model.tensors["blk.0.attn_q.weight"].dtype == np.uint16,
        "load_seconds": load_seconds,
        "resident_after_load_gib": after_load,
        "resident_after_forward_gib": resident_gib(),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0 if result["experts_mxfp4"] and result["attention_bf16"] else 1


if __name__ == "__main__":
    sys.exit(main())
