"""Kernel tables compared on the real model in one process: decode, a (K+1)-row forward, pp512, per table.

    python3 bench/run.py kernel_tables [--isas avx512 amx] [--precision bf16|mxfp4] [--rounds 5] [--out FILE]

One model (default Qwen2.5-Coder-1.5B upcast to BF16) is loaded once; every table runs on the same weights
(the tables share the weight layout and the key/value cache, and prepare activations per call). Each round
takes every table in turn, so all meet the same machine state, and per table measures: one-token forwards
after a 512-token prompt (decode tokens/s, median of the round), forwards of K + 1 tokens each paired with a
one-token forward just before it (median of paired ratios), and one 512-token forward from position 0
(pp512). Ratios between tables are taken within a round, then the median over rounds is reported: memory
bandwidth on a shared machine drifts within minutes. The load average at the start and end is recorded.
With --clock thread (and --threads 1, so the forward runs on the calling thread) each forward is timed by
the CPU time of that thread instead of the wall clock: on a machine loaded past its cores a wall-clock
sample mostly measures when the scheduler ran the process, the thread's CPU time only what it did
(memory and cache contention from the other processes still count).
Prints JSON (also written to bench/results/kernel_tables.json), then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS
from bench.machine import describe_machine
from mlspecqd import _native, hub
from mlspecqd.engine.model import Model

DEFAULT_MODEL = hub.cache_dir() / hub.NAMED_MODELS[hub.DEFAULT_MODEL].filename
PROMPT_TOKENS = 512


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
clock = CLOCKS["wall"]


def seconds(run: Callable[[], Any]) -> float:
    start = clock()
    run()
    return clock() - start


def measure_round(model: Model, decode_tokens: int, ks: list[int], pairs: int, rng: np.random.Generator) -> dict:
    """One table's figures for one round, on the active table."""
    prompt = rng.integers(100, 20000, PROMPT_TOKENS)
    continuation = rng.integers(100, 20000, decode_tokens + max(ks) + 1)
    prompt_seconds = seconds(lambda: model.forward(prompt, 0))
    decode = [seconds(lambda i=i: model.forward(continuation[i : i + 1], PROMPT_TOKENS + i))
              for i in range(decode_tokens)]
    ratios: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(pairs):
        for k in ks:
            single = seconds(lambda: model.forward(continuation[:1], PROMPT_TOKENS))
            batch = seconds(lambda k=k: model.forward(continuation[: k + 1], PROMPT_TOKENS, all_logits=True))
            ratios[k].append(batch / single)
    return {
        "prompt_tokens_per_second": PROMPT_TOKENS / prompt_seconds,
        "decode_tokens_per_second": 1.0 / statistics.median(decode),
        "verify_ratio_to_one_token": {k: statistics.median(r) for k, r in ratios.items()},
    }


def summarize(isas: list[str], rounds: list[dict[str, dict]], ks: list[int]) -> dict[str, Any]:
    """Per table: medians over rounds; per table after the first: median over rounds of its ratio to the first."""
    base = isas[0]
    summary: dict[str, Any] = {}
    for isa in isas:
        per_round = [r[isa] for r in rounds]
        entry = {
            "decode_tokens_per_second": statistics.median(r["decode_tokens_per_second"] for r in per_round),
            "prompt_tokens_per_second": statistics.median(r["prompt_tokens_per_second"] for r in per_round),
            "verify_ratio_to_one_token": {
                k: statistics.median(r["verify_ratio_to_one_token"][k] for r in per_round) for k in ks},
        }
        if isa != base:
            entry[f"decode_vs_{base}"] = statistics.median(
                r[isa]["decode_tokens_per_second"] / r[base]["decode_tokens_per_second"] for r in rounds)
            entry[f"prompt_vs_{base}"] = statistics.median(
                r[isa]["prompt_tokens_per_second"] / r[base]["prompt_tokens_per_second"] for r in rounds)
        summary[isa] = entry
    return summary


def print_table(isas: list[str], summary: dict[str, Any], ks: list[int]) -> None:
    base = isas[0]
    print(f"\n| table | decode tok/s | vs {base} | pp512 tok/s | vs {base} | "
          + " | ".join(f"{k + 1} rows / 1" for k in ks) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(ks))
    for isa in isas:
        s = summary[isa]
        decode_ratio = f"{s[f'decode_vs_{base}']:.2f}x" if isa != base else "-"
        prompt_ratio = f"{s[f'prompt_vs_{base}']:.2f}x" if isa != base else "-"
        ratios = " | ".join(f"{s['verify_ratio_to_one_token'][k]:.2f}x" for k in ks)
        print(f"| {isa} | {s['decode_tokens_per_second']:.2f} | {decode_ratio} | "
              f"{s['prompt_tokens_per_second']:.1f} | {prompt_ratio} | {ratios} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--isas", nargs="+",
                        default=[isa for isa in ("avx512", "amx") if isa in _native.supported_isas()],
                        help="tables to compare, the first the baseline of the ratios (default: avx512 amx, "
                             "those this machine runs)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "mxfp4"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8], help="verification rows minus one")
    parser.add_argument("--pairs", type=int, default=3, help="paired forwards per K and round")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="thread: CPU time of the calling thread (needs --threads 1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "kernel_tables.json")
    args = parser.parse_args(argv)
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread times the calling thread only: it needs --threads 1")
    global clock
    clock = CLOCKS[args.clock]
    for isa in args.isas:
        if isa not in _native.supported_isas():
            parser.error(f"--isas: this machine does not run the {isa} table (it runs {_native.supported_isas()})")

    _native.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model = Model.load(args.model, precision=args.precision,
                       context_length=PROMPT_TOKENS + args.decode_tokens + max(args.ks) + 8)
    model.forward(np.arange(100, 116), 0)  # warm-up: first touch of the weights and buffers
    rounds = []
    for r in range(args.rounds):
        this_round = {}
        for isa in args.isas:
            _native.set_isa(isa)
            this_round[isa] = measure_round(model, args.decode_tokens, args.ks, args.pairs, np.random.default_rng(r))
        rounds.append(this_round)
    model.close()
    summary = summarize(args.isas, rounds, args.ks)
    result = {
        "machine": describe_machine(args.threads),
        "model": str(args.model),
        "precision": args.precision,
        "clock": args.clock,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "summary": summary,
        "rounds": rounds,
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(args.isas, summary, args.ks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
