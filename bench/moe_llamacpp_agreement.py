"""The native MoE forward against llama.cpp on the same tiny Mixture-of-Experts GGUF files: top-1 agreement.

    python3 bench/run.py moe_llamacpp_agreement [--ctx 256] [--chunks 8] [--threads 2] [--out FILE]

The files are the tests' tiny MoE chat models (tests/support/llm_fixtures.py: qwen2moe, qwen3moe and a
Mixtral-style llama with experts, 2 layers, a 320-token byte-level vocabulary, random weights stored as
BF16, the routers in F32 as llama.cpp's converter writes them). Both engines run each file on the
Wikipedia sample of bench/corpora.py as bench/llamacpp_agreement.py runs them (llama-perplexity with
--kl-divergence-base, then our forward on the tokens it saved), which reports top-1 agreement,
perplexity and KL divergence. Random tiny models route some rows with router logits within 1e-4 of a
tie, where either engine's rounding can pick another expert, so each engine's top-1 is also compared
with the NumPy reference in float64 (mlspecqd/engine/reference_model.py, no BF16 rounding of activations)
on the same positions: which of the two departs from exact arithmetic.

Prints JSON (also written to bench/results/moe_llamacpp_agreement.json unless --out says otherwise), then
a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from bench import RESULTS, llamacpp
from bench.corpora import text as calibration_text
from bench.llamacpp_agreement import TEXT_CHARACTERS, SavedLogits, compare, llama_cpp_version, run_llama_perplexity
from bench.machine import describe_machine
from mlspecqd import _native
from mlspecqd.engine import reference_model
from mlspecqd.engine.model import Model
from mlspecqd.tokenizer import Tokenizer

# The tests' GGUF writers (tests/support), after the installed packages on the path.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))
from support.llm_fixtures import write_chat_model

# name: (GGUF architecture, sizes); Mixtral's GGUF is llama with experts.
MOE_MODELS = {
    "qwen2moe": ("qwen2moe", {}),
    "qwen3moe": ("qwen3moe", {}),
    "mixtral": ("llama", {"n_experts": 4, "n_experts_used": 2, "expert_d_ff": 64, "d_ff": 64}),
}
LAYERS = 2
GOAL_TOP1 = 0.99


def float64_agreement(saved: SavedLogits, model: Model, bos_id: int | None) -> dict[str, float]:
    """How often each engine's top-1 is the float64 reference's on the scored positions (llama.cpp's: the
    reference's top token has the row's largest saved code), chunks as compare() runs them."""
    weights = {name: reference_model.bf16_bits_to_float64(array) if array.dtype == np.uint16 else array
               for name, array in model.tensors.items()}
    ours = theirs = count = 0
    for chunk in range(saved.n_chunk):
        tokens = saved.tokens[chunk, : saved.n_ctx - 1].astype(np.int64)
        if bos_id is not None:
            tokens[0] = bos_id
        exact = reference_model.forward(model.spec, weights, tokens, round_matmul_inputs=False)[saved.first :]
        top = exact.argmax(axis=-1)
        ours += int((model.forward(tokens, 0, all_logits=True)[saved.first :].argmax(axis=-1) == top).sum())
        codes, _ = saved.log_probabilities(chunk, slice(0, saved.scored))
        theirs += int((codes[np.arange(len(top)), top] == codes.max(axis=-1)).sum())
        count += len(top)
    return {"top1_mlspecqd_vs_float64": ours / count, "top1_llama_cpp_vs_float64": theirs / count}


def run_model(name: str, text_file: Path, ctx: int, chunks: int, threads: int, work: Path) -> dict[str, Any]:
    architecture, sizes = MOE_MODELS[name]
    routers = {f"blk.{layer}.ffn_gate_inp.weight": GGMLQuantizationType.F32 for layer in range(LAYERS)}
    path = write_chat_model(work / f"{name}.gguf", {"n_layers": LAYERS, "context_length": 2 * ctx, **sizes},
                            architecture, seed=1, tensor_type=GGMLQuantizationType.BF16, tensor_types=routers)
    logits_file = work / f"{name}.logits"
    llama = run_llama_perplexity(path, text_file, ctx, chunks, threads, logits_file)
    saved = SavedLogits(logits_file)
    tokenizer = Tokenizer.from_gguf(path)
    with Model.load(path, context_length=saved.n_ctx) as model:
        bos_id = tokenizer.bos_id if tokenizer.add_bos else None
        ours = compare(saved, model, bos_id)
        exact = float64_agreement(saved, model, bos_id)
    del saved
    return {
        "model": name,
        "architecture": architecture,
        "ctx": ctx,
        "chunks": chunks,
        **{key: ours[key] for key in ("positions", "top1_agreement", "top1_agreement_first_index",
                                      "kl_divergence_mean")},
        "perplexity_mlspecqd": ours["perplexity"],
        "perplexity_llama_cpp": llama["perplexity"],
        "perplexity_relative_difference": ours["perplexity"] / llama["perplexity"] - 1.0,
        **exact,
        "meets_goal": ours["top1_agreement"] >= GOAL_TOP1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ctx", type=int, default=256, help="tokens per chunk (the second half is scored)")
    parser.add_argument("--chunks", type=int, default=8, help="chunks per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "moe_llamacpp_agreement.json",
                        help="JSON file (default: bench/results/moe_llamacpp_agreement.json)")
    args = parser.parse_args(argv)
    if not (llamacpp.BIN / "llama-perplexity").exists():
        print(f"llama.cpp's llama-perplexity is not in {llamacpp.BIN} (set LLAMA_CPP_BIN)", file=sys.stderr)
        return 2

    _native.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mlspecqd-moe-agreement-") as folder:
        work = Path(folder)
        text_file = work / "wiki.txt"
        text_file.write_text(calibration_text("wiki")[:TEXT_CHARACTERS], encoding="utf-8")
        results = [run_model(name, text_file, args.ctx, args.chunks, args.threads, work) for name in MOE_MODELS]
    report = {"benchmark": "moe_llamacpp_agreement", "text": "wiki.utf8 (exllamav2 0.3.2)",
              "llama_cpp": llama_cpp_version(), "goals": {"top1_agreement": GOAL_TOP1},
              "machine": describe_machine(args.threads), "results": results}
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print("| model | positions | top-1 agreement | top-1 = float64's: mlspecqd | llama.cpp "
          "| ppl mlspecqd | ppl llama.cpp | ppl diff | mean KLD |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['positions']} | {100 * r['top1_agreement']:.2f}% "
              f"| {100 * r['top1_mlspecqd_vs_float64']:.2f}% | {100 * r['top1_llama_cpp_vs_float64']:.2f}% "
              f"| {r['perplexity_mlspecqd']:.3f} | {r['perplexity_llama_cpp']:.3f} "
              f"| {100 * r['perplexity_relative_difference']:+.3f}% | {r['kl_divergence_mean']:.2e} |")
    return 0 if all(r["meets_goal"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
