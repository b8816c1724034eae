"""Perplexity of a model at BF16 and at MXFP4 on Wikipedia text: what the ML-SpecQD self-draft gives up.

The text is the Wikipedia sample of ../shared/MODELS.md; the MXFP4 rows are with the LM head left in BF16
and with the LM head cast too.

    python3 bench/run.py perplexity [--models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b] [--tokens 4096] [--window 512]
                                    [--threads N] [--out FILE]

The text is tokenized by our tokenizer and cut into windows that each start at position 0; every
position after the first of a window is scored. Prints JSON (also written to bench/results/perplexity.json
unless --out says otherwise) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench import RESULTS
from bench.corpora import text
from bench.machine import describe_machine
from mlspecqd import _native, hub
from mlspecqd.engine.model import Model
from mlspecqd.tokenizer import Tokenizer


def negative_log_likelihood(model: Model, tokens: np.ndarray, window: int) -> tuple[float, int]:
    total, count = 0.0, 0
    for begin in range(0, len(tokens) - 1, window):
        chunk = tokens[begin:begin + window]
        if len(chunk) < 2:
            break
        logits = model.forward(chunk, 0, all_logits=True).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_probabilities = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= log_probabilities[np.arange(len(chunk) - 1), chunk[1:]].sum()
        count += len(chunk) - 1
    return total, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="native threads (default: the module's own count)")
    parser.add_argument("--out", type=Path, default=RESULTS / "perplexity.json",
                        help="JSON file (default: bench/results/perplexity.json)")
    args = parser.parse_args()
    if args.threads:
        _native.set_num_threads(args.threads)
    wiki = text("wiki")
    rows = []
    for name in args.models.split(","):
        path = hub.resolve(name)
        tokens = np.array(Tokenizer.from_gguf(path).encode(wiki, add_special=False)[: args.tokens])
        bf16 = Model.load(path, context_length=args.window)
        variants = {"BF16": bf16, "MXFP4 (LM head BF16)": bf16.sibling("mxfp4", mxfp4_head=False),
                    "MXFP4 (LM head MXFP4)": bf16.sibling("mxfp4", mxfp4_head=True)}
        for precision, model in variants.items():
            started = time.perf_counter()
            total, count = negative_log_likelihood(model, tokens, args.window)
            rows.append({"model": name, "precision": precision, "tokens_scored": count,
                         "perplexity": float(np.exp(total / count)), "seconds": time.perf_counter() - started})
            model.close()
    for row in rows:
        base = next(r["perplexity"] for r in rows if r["model"] == row["model"] and r["precision"] == "BF16")
        row["vs_bf16"] = row["perplexity"] / base
    report = {"text": "wiki.utf8 (exllamav2 0.3.2)", "window": args.window, "machine": describe_machine(),
              "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print("| model | weights | perplexity | vs BF16 |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['precision']} | {row['perplexity']:.3f} | {row['vs_bf16']:.4f}x |")


if __name__ == "__main__":
    main()
