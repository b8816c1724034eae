"""The native decoder against Hugging Face transformers on real checkpoints: top-1 agreement and perplexity.

transformers loads the same GGUF in float32; both predict the next token at every position of the same
tokens, and the perplexity of each on them is compared.

The native model upcasts the (quantized) GGUF weights to BF16 and rounds GEMM inputs to BF16, while
transformers dequantizes to float32 and computes in float32, so small differences are expected; the
goal is >= 99% top-1 agreement and perplexity within 1%.

    python3 bench/run.py real_model_agreement [--positions 2048] [--window 512] [--out FILE]

Text: the Wikipedia sample of MODELS.md (wiki.utf8), tokenized by the transformers tokenizer of each
GGUF, cut into windows that each start at position 0. Prints JSON (also written to
bench/results/real_model_agreement.json unless --out says otherwise), then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS
from bench.corpora import text as calibration_text
from bench.machine import describe_machine
from mlspecqd import hub

MODELS_DIR = hub.cache_dir()
MODELS = {
    "SmolLM2-135M (llama)": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "Qwen2.5-Coder-0.5B (qwen2)": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def compare(gguf_path: Path, text: str, positions: int, window: int) -> dict[str, Any]:
    """Runs both implementations over `positions` tokens of `text` in windows of `window` tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlspecqd.engine.model import Model

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ids = tokenizer(text[: positions * 8], add_special_tokens=False).input_ids[:positions]
    if len(ids) < positions:
        raise ValueError(f"{gguf_path.name}: the text gives only {len(ids)} tokens, {positions} asked")
    windows = [ids[i : i + window] for i in range(0, positions, window)]
    reference = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     torch_dtype=torch.float32)
    reference.eval()
    native = Model.load(gguf_path, context_length=window)

    agree = predicted = 0
    nll_native: list[np.ndarray] = []
    nll_reference: list[np.ndarray] = []
    native_seconds = reference_seconds = 0.0
    for tokens in windows:
        start = time.perf_counter()
        ours = native.forward(tokens, 0, all_logits=True)
        native_seconds += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            theirs = reference(torch.tensor([tokens])).logits[0].float().numpy()
        reference_seconds += time.perf_counter() - start
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        predicted += len(tokens)
        targets = np.asarray(tokens[1:])
        rows = np.arange(len(targets))
        nll_native.append(-log_softmax(ours[:-1])[rows, targets])
        nll_reference.append(-log_softmax(theirs[:-1])[rows, targets])
    native.close()
    ppl_native = float(np.exp(np.concatenate(nll_native).mean()))
    ppl_reference = float(np.exp(np.concatenate(nll_reference).mean()))
    return {
        "model": gguf_path.name,
        "positions": predicted,
        "window": window,
        "top1_agreement": agree / predicted,
        "perplexity_native_bf16": ppl_native,
        "perplexity_transformers_f32": ppl_reference,
        "perplexity_relative_difference": ppl_native / ppl_reference - 1.0,
        "native_seconds": native_seconds,
        "transformers_seconds": reference_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=2048, help="tokens compared per model")
    parser.add_argument("--window", type=int, default=512, help="tokens per forward pass (each from position 0)")
    parser.add_argument("--out", "--json-out", dest="out", type=Path, default=RESULTS / "real_model_agreement.json",
                        help="JSON file (default: bench/results/real_model_agreement.json)")
    args = parser.parse_args(argv)

    text = calibration_text("wiki")
    results = []
    for label, file_name in MODELS.items():
        result = compare(MODELS_DIR / file_name, text, args.positions, args.window)
        results.append({"label": label, **result})
    report = {"benchmark": "real_model_agreement", "text": "wiki.utf8 (exllamav2 0.3.2)",
              "machine": describe_machine(), "results": results}
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print("| model | positions | top-1 agreement | ppl native BF16 | ppl transformers f32 | ppl diff |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['positions']} | {100 * r['top1_agreement']:.2f}% "
              f"| {r['perplexity_native_bf16']:.3f} | {r['perplexity_transformers_f32']:.3f} "
              f"| {100 * r['perplexity_relative_difference']:+.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
