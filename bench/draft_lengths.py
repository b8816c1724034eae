"""How close the cost policy comes to the best fixed draft lengths of the three-level cascade.

    python3 bench/run.py draft_lengths [--prompts 4] [--top 4 6 8] [--middle 2 4 8] [--threads 2] [--out FILE]

BF16 <- MXFP4 <- 0.5B:mxfp4 on the first --prompts HumanEval prompts (chat template, 128 new tokens,
greedy): the default cost policy, and every pair of fixed lengths (the MXFP4 level drafting --top tokens
for the target, the 0.5B drafting --middle tokens for the MXFP4 level), next to plain BF16. Prompt by
prompt, every configuration in turn, so drifts in the machine's speed hit all alike. Prints JSON and a
markdown table; writes bench/results/draft_lengths.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import RESULTS
from bench.machine import describe_machine
from bench.speculative import load_real
from mlspecqd import _native
from mlspecqd.apps.generation import generate
from mlspecqd.speculative import Cascade, FixedDraftLength, ModelLevel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--small", default="qwen2.5-coder-0.5b")
    parser.add_argument("--small-precision", default="mxfp4", choices=("bf16", "mxfp4"))
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--top", type=int, nargs="+", default=[4, 6, 8],
                        help="fixed lengths of the MXFP4 level's drafts")
    parser.add_argument("--middle", type=int, nargs="+", default=[2, 4, 8], help="fixed lengths of the 0.5B's drafts")
    parser.add_argument("--out", type=Path, default=RESULTS / "draft_lengths.json",
                        help="JSON file (default: bench/results/draft_lengths.json)")
    args = parser.parse_args()
    setup = load_real(args)

    def cascade(top: int | None, middle: int | None) -> Cascade:
        """The three levels; None: the cost policy at both draft levels."""
        policies = (None, None) if top is None else (FixedDraftLength(middle), FixedDraftLength(top))
        return Cascade([ModelLevel(setup.small, name=f"{args.small}:{args.small_precision}",
                                   tokenizer=setup.small_tokenizer, policy=policies[0]),
                        ModelLevel(setup.self_draft, name="mxfp4", tokenizer=setup.tokenizer, policy=policies[1]),
                        ModelLevel(setup.target, name=f"{args.target}:bf16", tokenizer=setup.tokenizer)],
                       policy="cost", draft_max=max(args.top + args.middle))

    cascades = {"plain BF16": Cascade([ModelLevel(setup.target, tokenizer=setup.tokenizer)]),
                "cost policy": cascade(None, None)}
    cascades.update({f"fixed: mxfp4 {top}, small {middle}": cascade(top, middle)
                     for top in args.top for middle in args.middle})
    for c in cascades.values():  # untimed warm-up of caches and policies
        generate(c, setup.tokenizer, setup.prompts[0], 8).run()
    totals = {name: {"predicted_n": 0, "predicted_ms": 0.0} for name in cascades}
    for index, prompt in enumerate(setup.prompts):
        for name, c in cascades.items():
            result = generate(c, setup.tokenizer, prompt, args.max_new_tokens).run()
            totals[name]["predicted_n"] += result.timings["predicted_n"]
            totals[name]["predicted_ms"] += result.timings["predicted_ms"]
        print(f"prompt {index + 1}/{len(setup.prompts)} done", file=sys.stderr, flush=True)

    plain = totals["plain BF16"]["predicted_n"] / totals["plain BF16"]["predicted_ms"]
    rows = [{"configuration": name, **t, "tokens_per_second": 1e3 * t["predicted_n"] / t["predicted_ms"],
             "speedup": t["predicted_n"] / t["predicted_ms"] / plain} for name, t in totals.items()]
    report = {"cascade": f"BF16 <- mxfp4 <- {args.small}:{args.small_precision}", "prompts": args.prompts,
              "max_new_tokens": args.max_new_tokens, "threads": _native.num_threads(),
              "machine": describe_machine(), "results": rows}
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n| configuration | tok/s | vs plain BF16 |\n|---|---|---|")
    for row in rows:
        print(f"| {row['configuration']} | {row['tokens_per_second']:.2f} | {row['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
