"""Prompt processing time of the default cascade with and without prefilling idle drafters on every prompt.

The default cascade (0.5B:mxfp4 -> mxfp4 -> BF16) with every drafter prefilled for every prompt, against
prefilling a drafter that sat the last generation out only every 8th prompt (the default,
Cascade.prefill_all_every).

    python3 bench/run.py prompt_time [--prompts 24] [--threads 2] [--max-new-tokens 128] [--out FILE]

The two settings run prompt by prompt in turn (HumanEval prompts in the chat template, 128 new tokens,
greedy) so that drifts in the machine's speed hit both alike. Prints JSON (also written to
bench/results/prompt_time.json unless --out says otherwise): per setting, mean prompt tokens, mean prompt ms,
decode tokens/s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import RESULTS
from bench.machine import describe_machine
from bench.speculative import load_real
from mlspecqd.apps.generation import generate
from mlspecqd.speculative import Cascade, ModelLevel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS / "prompt_time.json",
                        help="JSON file (default: bench/results/prompt_time.json)")
    args = parser.parse_args()
    setup = load_real(argparse.Namespace(target="qwen2.5-coder-1.5b", small="qwen2.5-coder-0.5b",
                                         small_precision="mxfp4", context=2048, prompts=args.prompts,
                                         threads=args.threads))

    def cascade(prefill_all_every: int) -> Cascade:
        made = Cascade([ModelLevel(setup.small, name="small", tokenizer=setup.small_tokenizer),
                        ModelLevel(setup.self_draft, name="mxfp4", tokenizer=setup.tokenizer),
                        ModelLevel(setup.target, name="target", tokenizer=setup.tokenizer)])
        made.prefill_all_every = prefill_all_every
        generate(made, setup.tokenizer, setup.prompts[0], 8).run()  # untimed warm-up
        return made

    settings = {"every drafter, every prompt": cascade(1), "idle drafters every 8th prompt": cascade(8)}
    totals = {name: {"prompt_n": 0, "prompt_ms": 0.0, "predicted_n": 0, "predicted_ms": 0.0} for name in settings}
    for prompt in setup.prompts:
        for name, made in settings.items():
            timings = generate(made, setup.tokenizer, prompt, args.max_new_tokens).run().timings
            for key in totals[name]:
                totals[name][key] += timings[key]
    report = {"prompts": len(setup.prompts), "threads": args.threads, "machine": describe_machine(), "results": [
        {"setting": name, "mean_prompt_tokens": t["prompt_n"] / len(setup.prompts),
         "mean_prompt_ms": t["prompt_ms"] / len(setup.prompts),
         "decode_tokens_per_second": t["predicted_n"] / (t["predicted_ms"] / 1e3)} for name, t in totals.items()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
