"""Speculative decoding benchmark: plain decoding against cascades, printed as JSON and a markdown table.

    python3 bench/run.py speculative                # real models from the cache (Qwen2.5-Coder 1.5B target)
    python3 bench/run.py speculative --synthetic    # the cascade's own Python cost, with free models

Real mode: greedy decoding of the first --prompts HumanEval prompts in the chat template, each
configuration on the same prompts after an untimed warm-up, prompt by prompt with every configuration
(llama.cpp's included) in turn so that drifts in the machine's speed hit all rows alike; reports tokens/s,
speedup over plain, whether every output is identical to plain decoding, and per-level acceptance. Run it
on an idle machine: other processes on the cores make the numbers meaningless. Synthetic mode: models whose
forward costs nothing but returns Qwen-sized logits (151,936), so the time measured is the cascade's own
work per generated token (verification, sampling transforms, bookkeeping), greedy and sampled.
The JSON goes to bench/results/speculative.json (real) or speculative-synthetic.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench import RESULTS
from bench.machine import describe_machine
from mlspecqd.apps.generation import generate
from mlspecqd.engine.kernel_choice import choose_draft_plan
from mlspecqd.engine.model import Model
from mlspecqd.engine.sampling import SamplingParams
from mlspecqd.speculative import Cascade, CostDraftLength, ModelLevel, NgramDrafter
from mlspecqd.tokenizer import Tokenizer


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

    def stream_decoder(self) -> SyntheticTokenizer:
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


class RealSetup(NamedTuple):
    """The Qwen pair of the benchmarks, loaded: BF16 target, its MXFP4 copy, the small draft; chat prompts."""

    target_path: Path
    small_path: Path
    tokenizer: Tokenizer
    small_tokenizer: Tokenizer
    target: Model
    self_draft: Model
    small: Model
    chats: list[str]
    prompts: list[list[int]]
    load_seconds: float


def local_file(model: str) -> Path | None:
    """A named model's file if it is in the cache, or `model` itself if it is a file; else None."""
    from mlspecqd import hub

    if model in hub.NAMED_MODELS:
        return hub.cached_path(model)
    return Path(model) if Path(model).is_file() else None


def load_real(args: argparse.Namespace) -> RealSetup:
    """Loads what args.target (a named model or a GGUF file), args.small, args.small_precision,
    args.context, args.threads and args.prompts name; the first args.prompts HumanEval prompts in the
    target's chat template."""
    from bench.corpora import human_eval_prompts
    from mlspecqd import _native
    from mlspecqd.apps.chat_template import render_chat

    target_path, small_path = local_file(args.target), local_file(args.small)
    if target_path is None or small_path is None:
        raise SystemExit(f"models not cached: run `mlspecqd pull {args.target}` and `mlspecqd pull {args.small}`")
    if args.threads:
        _native.set_num_threads(args.threads)
    if getattr(args, "isa", None) is not None:  # the benchmarks sharing this loader may not offer --isa
        _native.set_isa(args.isa)
    tokenizer = Tokenizer.from_gguf(target_path)
    small_tokenizer = Tokenizer.from_gguf(small_path)
    loaded = time.perf_counter()
    target = Model.load(target_path, precision="bf16", context_length=args.context)
    self_draft = target.sibling("mxfp4")
    small = Model.load(small_path, precision=args.small_precision, context_length=args.context)
    for draft in (self_draft, small):  # as mlspecqd.load() does: timed once per CPU, then remembered
        draft.set_kernel_plan(choose_draft_plan(draft.spec, draft.tensors))
    load_seconds = time.perf_counter() - loaded
    chats = [render_chat(tokenizer.chat_template, [{"role": "user", "content": text}], add_generation_prompt=True)
             for text in human_eval_prompts(args.prompts)]
    prompts = [tokenizer.encode(chat, add_special=True, parse_special=True) for chat in chats]
    return RealSetup(target_path, small_path, tokenizer, small_tokenizer, target, self_draft, small, chats, prompts,
                     load_seconds)


def real(args: argparse.Namespace) -> dict:
    from bench import llamacpp
    from mlspecqd import _native

    setup = load_real(args)
    target_path, small_path, tokenizer, small_tokenizer = (setup.target_path, setup.small_path, setup.tokenizer,
                                                           setup.small_tokenizer)
    target, self_draft, small, chats, prompts = setup.target, setup.self_draft, setup.small, setup.chats, setup.prompts
    small_name = f"{args.small}:{args.small_precision}"
    level_factories: dict[str, Callable[[], object]] = {
        "ngram": NgramDrafter,
        "small": lambda: ModelLevel(small, name=small_name, tokenizer=small_tokenizer),
        # The cost policy without its token-by-token stopping rule: every round drafts the planned K.
        "small-planned": lambda: ModelLevel(small, name=small_name, tokenizer=small_tokenizer,
                                            policy=CostDraftLength(args.draft_max, stop_early=False)),
        "mxfp4": lambda: ModelLevel(self_draft, name="mxfp4", tokenizer=tokenizer),
    }
    models = {"small": small, "small-planned": small, "mxfp4": self_draft}
    # Rows: drafts smallest first, then the BF16 target ("plain" has none).
    configurations = {
        "plain": [], "small": ["small"], "mxfp4": ["mxfp4"], "small+mxfp4": ["small", "mxfp4"],
        "ngram": ["ngram"], "ngram+mxfp4": ["ngram", "mxfp4"], "ngram+small+mxfp4": ["ngram", "small", "mxfp4"],
        # The strict chain: each level drafts only for the next (Cascade(skip_levels=False)).
        "small+mxfp4-chain": ["small", "mxfp4"],
        "small-planned": ["small-planned"],
    }
    selected = args.configurations.split(",") if args.configurations else list(configurations)

    def weight_bytes(drafts: list[str]) -> int:
        loaded = [target] + [models[d] for d in drafts if d in models]
        # Counted once by id: the MXFP4 sibling shares the target's embedding, norms and biases.
        arrays = {id(a): a.nbytes for m in loaded for a in m.tensors.values()}
        return sum(arrays.values())

    # One cascade per configuration, as a server or chat session keeps it: the cost policy's
    # measurements carry over between prompts. A short untimed run first warms caches and the policy.
    cascades = {}
    for name in selected:
        levels = [level_factories[d]() for d in configurations[name]]
        levels.append(ModelLevel(target, name=f"{args.target}:bf16", tokenizer=tokenizer))
        cascades[name] = Cascade(levels, policy=args.policy, draft_max=args.draft_max,
                                 skip_levels=not name.endswith("-chain"))
        generate(cascades[name], tokenizer, prompts[0], 8).run()
    llama_runs = llama_cpp_runs(args, target_path, small_path) if args.llama_cpp and llamacpp.available() else {}
    runs = {name: (lambda prompt, chat, c=cascades[name]: generate(c, tokenizer, prompt, args.max_new_tokens).run())
            for name in selected}
    results = interleaved_runs({**runs, **llama_runs}, prompts, chats)

    plain = results.get("plain")
    summary = []
    for name in selected:
        drafts, generations = configurations[name], results[name]
        predicted_n = sum(r.timings["predicted_n"] for r in generations)
        predicted_ms = sum(r.timings["predicted_ms"] for r in generations)
        identical = None
        if plain and name != "plain":
            identical = all(r.tokens == p.tokens for r, p in zip(generations, plain))
        label = "plain BF16"
        if drafts:
            label = f"BF16 <- {' <- '.join(d.removesuffix('-planned') for d in reversed(drafts))}"
        if name.endswith("-chain"):
            label += " (strict chain)"
        elif name.endswith("-planned"):
            label += " (planned lengths)"
        summary.append({"configuration": label,
                        "engine": "mlspecqd", "predicted_n": predicted_n, "predicted_ms": predicted_ms,
                        "tokens_per_second": predicted_n / (predicted_ms / 1e3), "identical_to_plain": identical,
                        "weight_gib": weight_bytes(drafts) / 2**30,
                        "levels": level_totals([r.timings["levels"] for r in generations])})
    for name in llama_runs:
        generations = results[name]
        predicted_n = sum(g.predicted_n for g in generations)
        seconds = sum(g.predicted_seconds for g in generations)
        drafted, accepted = sum(g.drafted for g in generations), sum(g.accepted for g in generations)
        summary.append({"configuration": name, "engine": "llama.cpp", "predicted_n": predicted_n,
                        "predicted_ms": seconds * 1e3, "tokens_per_second": predicted_n / seconds,
                        "identical_to_plain": None, "weight_gib": None,
                        "levels": [{"name": "draft", "draft_n": drafted, "draft_n_accepted": accepted,
                                    "acceptance_rate": accepted / drafted if drafted else None}] if drafted else []})
    plain_rate = next((row["tokens_per_second"] for row in summary if row["configuration"] == "plain BF16"), None)
    for row in summary:
        row["speedup"] = row["tokens_per_second"] / plain_rate if plain_rate else None
    return {"target": args.target, "small": small_name, "policy": args.policy,
            "draft_max": args.draft_max, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
            "threads": _native.num_threads(), "isa": _native.active_isa(), "load_seconds": setup.load_seconds,
            "draft_kernels": {"mxfp4": self_draft.kernel_plan.describe(), small_name: small.kernel_plan.describe()},
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "machine": describe_machine(), "load_average": os.getloadavg(), "results": summary}


def interleaved_runs(runs: dict[str, Callable[[list[int], str], object]], prompts: Sequence[list[int]],
                     chats: Sequence[str]) -> dict[str, list]:
    """Each run's results on every prompt (a run takes the prompt's tokens and its chat text), prompt by
    prompt with every run in turn: the speed of these shared machines (their memory bandwidth above all)
    drifts over minutes, and interleaving gives every run the same mix."""
    results: dict[str, list] = {name: [] for name in runs}
    for index, (prompt, chat) in enumerate(zip(prompts, chats)):
        for name, run in runs.items():
            results[name].append(run(prompt, chat))
        print(f"prompt {index + 1}/{len(prompts)} done", file=sys.stderr, flush=True)
    return results


def llama_cpp_runs(args: argparse.Namespace, target_path: Path, small_path: Path) -> dict[str, Callable]:
    """llama.cpp on the same prompts: plain BF16, and llama-speculative with the 0.5B (its Q4_K_M file) and
    with the MXFP4 copy of the target as drafts, at the same draft length. Each run takes a chat prompt."""
    from bench import llamacpp

    threads = args.threads or os.cpu_count()
    bf16, mxfp4 = llamacpp.quantized_copy(target_path, "bf16"), llamacpp.quantized_copy(target_path, "mxfp4")
    return {
        "plain BF16": lambda chat: llamacpp.completion(bf16, chat, args.max_new_tokens, threads, args.context),
        "BF16 <- small (Q4_K_M)": lambda chat: llamacpp.speculative(
            bf16, small_path, chat, args.max_new_tokens, threads, args.context, args.draft_max),
        "BF16 <- mxfp4": lambda chat: llamacpp.speculative(
            bf16, mxfp4, chat, args.max_new_tokens, threads, args.context, args.draft_max),
    }


def level_totals(per_prompt: list[list[dict]]) -> list[dict]:
    """Per level, summed over prompts: drafted, accepted, acceptance rate, forward time, the draft
    lengths chosen and proposed, and the drafting rounds by the level drafted for."""
    totals = []
    for index, first in enumerate(per_prompt[0]):
        drafted = sum(levels[index]["draft_n"] for levels in per_prompt)
        accepted = sum(levels[index]["draft_n_accepted"] for levels in per_prompt)
        choices, proposed, rounds_by_verifier = Counter(), Counter(), Counter()
        for levels in per_prompt:
            choices.update({int(k): v for k, v in levels[index]["draft_length_choices"].items()})
            proposed.update({int(k): v for k, v in levels[index]["proposed_lengths"].items()})
            rounds_by_verifier.update(levels[index]["rounds_by_verifier"])
        totals.append({"name": first["name"], "draft_n": drafted, "draft_n_accepted": accepted,
                       "acceptance_rate": accepted / drafted if drafted else None,
                       "forward_ms": sum(levels[index]["forward_ms"] for levels in per_prompt),
                       "draft_length_choices": dict(sorted(choices.items())),
                       "proposed_lengths": dict(sorted(proposed.items())),
                       "rounds_by_verifier": dict(rounds_by_verifier)})
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true", help="measure the cascade's own cost with free models")
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--small", default="qwen2.5-coder-0.5b")
    parser.add_argument("--small-precision", default="mxfp4", choices=("bf16", "mxfp4"))
    parser.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false", help="skip llama.cpp's rows")
    parser.add_argument("--configurations", default="", help="comma-separated subset, e.g. plain,small")
    parser.add_argument("--policy", default="cost")
    parser.add_argument("--draft-max", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--isa", default=None, help="pin mlspecqd's kernel table (scalar, avx2, avxvnni, avx512, amx)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: bench/results/speculative.json, speculative-synthetic.json)")
    args = parser.parse_args()
    if args.synthetic:
        rows = synthetic(args)
        report = {"kind": "synthetic", "vocab": SyntheticTokenizer.vocab_size, "max_new_tokens": args.max_new_tokens,
                  "draft_max": 8, "policy": "fixed", "machine": describe_machine(),
                  "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "results": rows}
        table = ["| mode | configuration | target rounds | cascade overhead per token (us) |", "|---|---|---|---|"]
        table += [f"| {r['mode']} | {r['configuration']} | {r['target_rounds']} | {r['overhead_us_per_token']:.0f} |"
                  for r in rows]
    else:
        report = {"kind": "real", **real(args)}
        table = ["| engine | configuration | tok/s | vs plain BF16 | identical to plain | acceptance per level "
                 "| weights GiB |", "|---|---|---|---|---|---|---|"]
        for row in report["results"]:
            acceptance = ", ".join(f"{level['name']} {level['acceptance_rate']:.2f}"
                                   for level in row["levels"] if level["acceptance_rate"] is not None) or "-"
            weights = f"{row['weight_gib']:.2f}" if row["weight_gib"] else "-"
            table.append(f"| {row['engine']} | {row['configuration']} | {row['tokens_per_second']:.2f} | "
                         f"{row['speedup']:.2f}x | {row['identical_to_plain']} | {acceptance} | {weights} |")
    out = args.out or RESULTS / ("speculative.json" if report["kind"] == "real" else "speculative-synthetic.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print("\n".join(table))


if __name__ == "__main__":
    main()
