"""Speculative decoding on a Mixture-of-Experts target: the cost policy against every fixed draft length.

    python3 bench/run.py moe_speculation [--draft small|mxfp4] [--lengths 1 2 3 4 6 8] [--prompts 8]
                                         [--max-new-tokens 128] [--threads 2] [--out FILE]

Target: Qwen2.5-Coder 1.5B MoEfied by bench/moefy.py (16 experts, 4 per token, a shared expert), BF16;
draft: the 0.5B (--small-precision, MXFP4 by default) or the target's own MXFP4 copy (--draft mxfp4).
Greedy decoding of the first --prompts HumanEval prompts in the chat template (bench/speculative.py's
load_real), every configuration on each prompt in turn (interleaved_runs): plain decoding, the draft
at each fixed length of --lengths, and the cost policy (draft_max the longest length) with and without
its stopping rule. A verification of T rows on this target reads the distinct experts of T tokens, so
its cost grows with T much faster than on the dense model; the goals are a cost policy never slower
than plain decoding and within 5% of the best fixed length. Reports tokens/s, the ratio to plain, whether
the output is plain decoding's, the lengths each configuration proposed, and the distinct experts per
layer the target's level measured by forward size next to what a uniform router would read. Prints
JSON (bench/results/moe_speculation.json unless --out says otherwise) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bench import RESULTS
from bench.machine import describe_machine
from bench.moe_forward import expected_distinct_experts
from bench.speculative import interleaved_runs, level_totals, load_real
from mlspecqd import _native
from mlspecqd.apps.generation import generate
from mlspecqd.speculative import Cascade, CostDraftLength, FixedDraftLength, ModelLevel

TARGET_SOURCE = "qwen2.5-coder-1.5b"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=None, help="GGUF file of the target (default: bench/moefy.py's "
                                                       "MoEfied Qwen2.5-Coder 1.5B, built if absent)")
    parser.add_argument("--small", default="qwen2.5-coder-0.5b")
    parser.add_argument("--small-precision", default="mxfp4", choices=("bf16", "mxfp4"))
    parser.add_argument("--draft", default="small", choices=("small", "mxfp4"),
                        help="small: the 0.5B; mxfp4: the target's own MXFP4 copy")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "moe_speculation.json")
    args = parser.parse_args(argv)
    if args.target is None:
        from bench.moefy import moefied_model_file

        args.target = str(moefied_model_file(TARGET_SOURCE))
    load_average_start = os.getloadavg()
    setup = load_real(args)
    draft_max = max(args.lengths)

    def drafter(policy: object) -> ModelLevel:
        if args.draft == "mxfp4":
            return ModelLevel(setup.self_draft, name="mxfp4", tokenizer=setup.tokenizer, policy=policy)
        return ModelLevel(setup.small, name=f"{args.small}:{args.small_precision}", tokenizer=setup.small_tokenizer,
                          policy=policy)

    def with_target(draft: ModelLevel | None) -> Cascade:
        target = ModelLevel(setup.target, name="target", tokenizer=setup.tokenizer)  # each with its own time model
        return Cascade([target] if draft is None else [draft, target], policy="cost", draft_max=draft_max)

    cascades = {"plain": with_target(None)}
    cascades.update({f"fixed {length}": with_target(drafter(FixedDraftLength(length))) for length in args.lengths})
    cascades["cost policy"] = with_target(drafter(None))
    cascades["cost policy, planned lengths"] = with_target(drafter(CostDraftLength(draft_max, stop_early=False)))
    for cascade in cascades.values():  # untimed warm-up of caches and policies
        generate(cascade, setup.tokenizer, setup.prompts[0], 8).run()
    runs = {name: (lambda prompt, chat, c=cascade: generate(c, setup.tokenizer, prompt, args.max_new_tokens).run())
            for name, cascade in cascades.items()}
    results = interleaved_runs(runs, setup.prompts, setup.chats)

    plain = results["plain"]
    rows = []
    for name, generations in results.items():
        predicted_n = sum(r.timings["predicted_n"] for r in generations)
        predicted_ms = sum(r.timings["predicted_ms"] for r in generations)
        rows.append({"configuration": name, "predicted_n": predicted_n, "predicted_ms": predicted_ms,
                     "tokens_per_second": 1e3 * predicted_n / predicted_ms,
                     "identical_to_plain": all(r.tokens == p.tokens for r, p in zip(generations, plain)),
                     "levels": level_totals([r.timings["levels"] for r in generations])})
    plain_rate = rows[0]["tokens_per_second"]
    for row in rows:
        row["speedup"] = row["tokens_per_second"] / plain_rate
    best_fixed = max((row for row in rows if row["configuration"].startswith("fixed")),
                     key=lambda row: row["tokens_per_second"])
    cost = next(row for row in rows if row["configuration"] == "cost policy")
    spec = setup.target.spec
    experts = cascades["cost policy"].target.experts
    report: dict[str, Any] = {
        "target": args.target, "draft": args.draft, "small": f"{args.small}:{args.small_precision}",
        "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "threads": _native.num_threads(),
        "isa": _native.active_isa(), "machine": describe_machine(), "load_average_start": load_average_start,
        "load_average_end": os.getloadavg(), "results": rows,
        "best_fixed": best_fixed["configuration"],
        "cost_policy_vs_best_fixed": cost["tokens_per_second"] / best_fixed["tokens_per_second"],
        "cost_policy_vs_plain": cost["speedup"],
    }
    if experts is not None:  # a dense --target has none
        report["routed_expert_share_of_one_row"] = experts.expert_share
        # The cost policy's target level: distinct experts per layer by forward size, as it measured them.
        report["distinct_experts_by_rows"] = {
            size: {"measured": distinct,
                   "uniform": expected_distinct_experts(spec.n_experts, spec.n_experts_used, size)}
            for size, distinct in sorted(experts.measured_sizes().items()) if size <= 16}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print("\n| configuration | tok/s | vs plain | identical | acceptance | tokens drafted per round: rounds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        draft = row["levels"][0] if len(row["levels"]) > 1 else None
        acceptance = f"{draft['acceptance_rate']:.2f}" if draft and draft["acceptance_rate"] is not None else "-"
        proposed = ", ".join(f"{k}: {v}" for k, v in draft["proposed_lengths"].items()) if draft else "-"
        print(f"| {row['configuration']} | {row['tokens_per_second']:.2f} | {row['speedup']:.2f}x | "
              f"{row['identical_to_plain']} | {acceptance} | {proposed} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
