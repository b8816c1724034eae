"""Speculative decoding benchmark: plain decoding against cascades, printed as JSON and a markdown table.

    python3 bench/speculative.py                  # real models from the cache (Qwen2.5-Coder 1.5B target)
    python3 bench/speculative.py --synthetic      # the cascade's own Python cost, with free models

Real mode: greedy decoding of the first --prompts HumanEval prompts in the chat template, each
configuration on the same prompts after an untimed warm-up; reports tokens/s, speedup over plain,
whether every output is identical to plain decoding, and per-level acceptance. Run it on an idle
machine: other processes on the cores make the numbers meaningless. Synthetic mode: models whose forward costs
nothing but returns Qwen-sized logits (151,936), so the time measured is the cascade's own work per
generated token (verification, sampling transforms, bookkeeping), greedy and sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlspecqd.generation import generate  # noqa: E402
from mlspecqd.sampling import SamplingParams  # noqa: E402
from mlspecqd.speculative import Cascade, ModelLevel, NgramDrafter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class SyntheticModel:
    """Free forward passes: logits are rows of a fixed random table picked by the last two tokens."""

    def __init__(self, table: np.ndarray, context_length: int = 4096) -> None:
        self.table = table
        self.vocab_size = table.shape[1]
        self.context_length = context_length
        self._tokens: list[int] = []

    @property
    def n_past(self) -> int:
        return len(self._tokens)

    def truncate(self, n: int) -> None:
        del self._tokens[n:]

    def forward(self, tokens: Sequence[int], start: int, all_logits: bool) -> np.ndarray:
        del self._tokens[start:]
        rows = []
        for token in tokens:
            self._tokens.append(int(token))
            rows.append((self._tokens[-1] * 31 + (self._tokens[-2] if len(self._tokens) > 1 else 0)) % len(self.table))
        return self.table[rows] if all_logits else self.table[rows[-1:]]


class SyntheticTokenizer:
    vocab_size = 151_936
    end_of_generation_ids: frozenset[int] = frozenset()

    def stream_decoder(self) -> "SyntheticTokenizer":
        return self

    def feed(self, token: int) -> str:
        return "x"

    def flush(self) -> str:
        return ""

    def is_end_of_generation(self, token: int) -> bool:
        return False


def synthetic(args: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((61, SyntheticTokenizer.vocab_size)) * 3).astype(np.float32)
    noisy = table + (rng.standard_normal(table.shape) * 0.5).astype(np.float32)
    configurations: dict[str, Callable[[], list]] = {
        "plain": lambda: [SyntheticModel(table)],
        "ngram": lambda: [NgramDrafter(), SyntheticModel(table)],
        "draft": lambda: [SyntheticModel(noisy), SyntheticModel(table)],
        "ngram+draft+draft": lambda: [NgramDrafter(), SyntheticModel(noisy), SyntheticModel(noisy),
                                      SyntheticModel(table)],
    }
    prompt = list(range(1, 200))
    rows = []
    for mode, sampling in (("greedy", None), ("sampled", SamplingParams(seed=0))):
        for name, levels in configurations.items():
            cascade = Cascade(levels(), policy="fixed", draft_max=8)
            started = time.perf_counter()
            result = generate(cascade, SyntheticTokenizer(), prompt, args.max_new_tokens, sampling=sampling).run()
            seconds = time.perf_counter() - started
            # The synthetic forwards still copy logits rows out of the table; that is the models' time.
            model_seconds = sum(level["forward_ms"] for level in result.timings["levels"]) / 1e3
            rows.append({"mode": mode, "configuration": name, "tokens": len(result.tokens),
                         "overhead_us_per_token": (seconds - model_seconds) / len(result.tokens) * 1e6,
                         "target_rounds": result.timings["levels"][-1]["verify_rounds"]})
    return rows


def real(args: argparse.Namespace) -> dict:
    from bench.datasets import human_eval_prompts
    from mlspecqd import _native, hub
    from mlspecqd.chat import render_chat
    from mlspecqd.model import Model
    from mlspecqd.tokenizer import Tokenizer

    target_path, small_path = hub.cached_path(args.target), hub.cached_path(args.small)
    if target_path is None or small_path is None:
        raise SystemExit(f"models not cached: run `mlspecqd pull {args.target}` and `mlspecqd pull {args.small}`")
    if args.threads:
        _native.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_gguf(target_path)
    small_tokenizer = Tokenizer.from_gguf(small_path)
    loaded = time.perf_counter()
    target = Model.load(target_path, precision="bf16", context_length=args.context)
    small = Model.load(small_path, precision=args.small_precision, context_length=args.context)
    self_draft = None
    if args.self_draft:
        self_draft = Model.from_arrays(target.spec, target.tensors, precision="mxfp4", context_length=args.context)
    load_seconds = time.perf_counter() - loaded

    def small_level() -> ModelLevel:
        return ModelLevel(small, name=f"{args.small}:{args.small_precision}", tokenizer=small_tokenizer)

    def target_level() -> ModelLevel:
        return ModelLevel(target, name=f"{args.target}:bf16", tokenizer=tokenizer)

    configurations: dict[str, Callable[[], list]] = {
        "plain": lambda: [target_level()],
        "ngram": lambda: [NgramDrafter(), target_level()],
        "small": lambda: [small_level(), target_level()],
        "ngram+small": lambda: [NgramDrafter(), small_level(), target_level()],
    }
    if self_draft is not None:
        configurations["small+mxfp4"] = lambda: [small_level(), ModelLevel(self_draft, name="mxfp4"), target_level()]
        configurations["mxfp4"] = lambda: [ModelLevel(self_draft, name="mxfp4"), target_level()]
    selected = args.configurations.split(",") if args.configurations else list(configurations)
    prompts = []
    for text in human_eval_prompts(args.prompts):
        chat = render_chat(tokenizer.chat_template, [{"role": "user", "content": text}], add_generation_prompt=True)
        prompts.append(tokenizer.encode(chat, add_special=True, parse_special=True))

    plain_outputs: list[list[int]] = []
    summary = []
    for name in selected:
        # One cascade per configuration, as a server or chat session keeps it: the cost policy's
        # measurements carry over between prompts. A short untimed run first warms caches and the policy.
        cascade = Cascade(configurations[name](), policy=args.policy, draft_max=args.draft_max)
        generate(cascade, tokenizer, prompts[0], 8).run()
        predicted_n, predicted_ms, identical, levels = 0, 0.0, True, []
        for index, prompt in enumerate(prompts):
            result = generate(cascade, tokenizer, prompt, args.max_new_tokens).run()
            predicted_n += result.timings["predicted_n"]
            predicted_ms += result.timings["predicted_ms"]
            if name == "plain":
                plain_outputs.append(result.tokens)
            elif plain_outputs:
                identical &= result.tokens == plain_outputs[index]
            levels.append(result.timings["levels"])
        summary.append({"configuration": name, "predicted_n": predicted_n, "predicted_ms": predicted_ms,
                        "tokens_per_second": predicted_n / (predicted_ms / 1e3),
                        "identical_to_plain": identical if plain_outputs and name != "plain" else None,
                        "levels": _level_totals(levels)})
    plain_rate = next((row["tokens_per_second"] for row in summary if row["configuration"] == "plain"), None)
    for row in summary:
        row["speedup"] = row["tokens_per_second"] / plain_rate if plain_rate else None
    return {"target": args.target, "small": f"{args.small}:{args.small_precision}", "policy": args.policy,
            "draft_max": args.draft_max, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
            "threads": _native.num_threads(), "isa": _native.active_isa(), "load_seconds": load_seconds,
            "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
            "results": summary}


def _level_totals(per_prompt: list[list[dict]]) -> list[dict]:
    """Per level, summed over prompts: drafted, accepted, acceptance rate, forward time."""
    totals = []
    for index, first in enumerate(per_prompt[0]):
        drafted = sum(levels[index]["draft_n"] for levels in per_prompt)
        accepted = sum(levels[index]["draft_n_accepted"] for levels in per_prompt)
        totals.append({"name": first["name"], "draft_n": drafted, "draft_n_accepted": accepted,
                       "acceptance_rate": accepted / drafted if drafted else None,
                       "forward_ms": sum(levels[index]["forward_ms"] for levels in per_prompt)})
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true", help="measure the cascade's own cost with free models")
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--small", default="qwen2.5-coder-0.5b")
    parser.add_argument("--small-precision", default="bf16", choices=("bf16", "mxfp4"))
    parser.add_argument("--self-draft", action="store_true", help="add the MXFP4 copy of the target as a level")
    parser.add_argument("--configurations", default="", help="comma-separated subset, e.g. plain,small")
    parser.add_argument("--policy", default="cost")
    parser.add_argument("--draft-max", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/...)")
    args = parser.parse_args()
    if args.synthetic:
        rows = synthetic(args)
        report = {"kind": "synthetic", "vocab": SyntheticTokenizer.vocab_size, "max_new_tokens": args.max_new_tokens,
                  "draft_max": 8, "policy": "fixed", "machine": platform.processor() or platform.machine(),
                  "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "results": rows}
        table = ["| mode | configuration | target rounds | cascade overhead per token (us) |", "|---|---|---|---|"]
        table += [f"| {r['mode']} | {r['configuration']} | {r['target_rounds']} | {r['overhead_us_per_token']:.0f} |"
                  for r in rows]
    else:
        report = {"kind": "real", **real(args)}
        table = ["| configuration | tok/s | speedup | identical to plain | acceptance per level |",
                 "|---|---|---|---|---|"]
        for row in report["results"]:
            acceptance = ", ".join(f"{level['name']} {level['acceptance_rate']:.2f}"
                                   for level in row["levels"] if level["acceptance_rate"] is not None) or "-"
            table.append(f"| {row['configuration']} | {row['tokens_per_second']:.2f} | {row['speedup']:.2f}x | "
                         f"{row['identical_to_plain']} | {acceptance} |")
    out = args.out or RESULTS / f"speculative-{report['kind']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print("\n".join(table))


if __name__ == "__main__":
    main()
