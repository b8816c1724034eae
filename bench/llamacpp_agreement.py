"""The native decoder against llama.cpp on the same BF16 GGUF: top-1 agreement, perplexity and KL divergence.

    python3 bench/run.py llamacpp_agreement [--models gemma-3-270m,qwen2.5-coder-0.5b,smollm2-135m]
                                            [--ctx 1024] [--chunks 3] [--threads 2] [--out FILE]

For each named model (from the cache; `mlspecqd pull NAME` first), `mlspecqd convert --type bf16` makes a
BF16 copy of its GGUF (cached next to it as NAME.mlspecqd-bf16.gguf), and both engines run that one file:

  - llama.cpp: `llama-perplexity -c CTX --chunks N --kl-divergence-base FILE` on the Wikipedia sample of
    bench/corpora.py. It tokenizes the text, runs chunks of CTX tokens from position 0 (the first token
    of a chunk replaced by BOS where the vocabulary adds one), prints the perplexity of the second half
    of every chunk, and saves those positions' log-probabilities (16-bit, over the top 16 nats), and the
    tokens, to FILE.
  - mlspecqd: the same tokens (read from FILE, so no tokenizer difference enters), the same chunks and
    BOS rule, the same scored positions.

Reported per model: top-1 agreement (our argmax is llama.cpp's: its saved log-probability is the
chunk's maximum, i.e. llama.cpp's own top-1 up to the 16-bit rounding of its file, at most 16/65535
nats), the perplexity of each (llama.cpp's as it prints it, from its float32 logits), their relative
difference, and the mean KL divergence KL(llama.cpp || mlspecqd) over llama.cpp's tokens within 16
nats of its top (as llama-perplexity --kl-divergence computes it). Goals: top-1 agreement >= 99% and
perplexity within 0.5%. With CTX = 1024, positions 512..1022 are scored, where Gemma 3's local layers
see only their window of 512 keys.

Prints JSON (also written to bench/results/llamacpp_agreement.json unless --out says otherwise), then a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS, llamacpp
from bench.corpora import text as calibration_text
from bench.machine import describe_machine
from mlspecqd import _native, hub
from mlspecqd.engine.model import Model
from mlspecqd.gguf import convert
from mlspecqd.tokenizer import Tokenizer

DEFAULT_MODELS = ("gemma-3-270m", "qwen2.5-coder-0.5b", "smollm2-135m")
TEXT_CHARACTERS = 200_000  # far more than --chunks x --ctx tokens of wiki text need
GOAL_TOP1 = 0.99
GOAL_PERPLEXITY = 0.005
ROWS_PER_BLOCK = 64  # scored rows taken to float64 together


def bf16_copy(source: Path) -> Path:
    """Our BF16 conversion of `source`, cached next to it."""
    target = source.with_name(f"{source.stem}.mlspecqd-bf16.gguf")
    if not target.exists():
        convert(source, target, "bf16")
    return target


def llama_cpp_version() -> str:
    done = subprocess.run([str(llamacpp.BIN / "llama-perplexity"), "--version"], capture_output=True, text=True)
    return " ".join((done.stdout + done.stderr).split())


def run_llama_perplexity(model: Path, text_file: Path, ctx: int, chunks: int, threads: int,
                         logits_file: Path) -> dict[str, Any]:
    """llama-perplexity with --kl-divergence-base: its printed perplexity, and the saved log-probabilities."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(llamacpp.BIN / "llama-perplexity"), "-m", str(model), "-f", str(text_file), "-c", str(ctx),
         "--chunks", str(chunks), "-t", str(threads), "--kl-divergence-base", str(logits_file)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    match = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", done.stderr)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"llama-perplexity failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return {"perplexity": float(match.group(1)), "perplexity_error": float(match.group(2)), "seconds": seconds}


class SavedLogits:
    """A llama-perplexity logits file: "_logits_", int32 n_ctx, n_vocab, n_chunk, the n_chunk x n_ctx
    tokens (int32), then per chunk and scored position (n_ctx/2 .. n_ctx - 2) one record of uint16:
    two float32 (scale, min_log_prob) and n_vocab codes, padded to an even count; log p = scale * code
    + min_log_prob (code 0: at most min_log_prob, which lies 16 nats under the top or at the minimum)."""

    def __init__(self, path: Path) -> None:
        self.raw = np.memmap(path, dtype=np.uint8, mode="r")
        if bytes(self.raw[:8]) != b"_logits_":
            raise ValueError(f"{path}: not a llama-perplexity logits file")
        self.n_ctx, self.n_vocab, self.n_chunk = (int(v) for v in np.frombuffer(self.raw[8:20], dtype=np.int32))
        tokens_end = 20 + 4 * self.n_chunk * self.n_ctx
        self.tokens = np.frombuffer(self.raw[20:tokens_end], dtype=np.int32).reshape(self.n_chunk, self.n_ctx)
        self.first = self.n_ctx // 2
        self.scored = self.n_ctx - 1 - self.first
        record = 2 * ((self.n_vocab + 1) // 2) + 4
        records = np.frombuffer(self.raw[tokens_end:], dtype=np.uint16)
        if records.size != self.n_chunk * self.scored * record:
            raise ValueError(f"{path}: {records.size} codes, expected {self.n_chunk * self.scored * record}")
        self.records = records.reshape(self.n_chunk, self.scored, record)

    def log_probabilities(self, chunk: int, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """(codes, log-probabilities) of the scored rows `rows` of a chunk."""
        block = self.records[chunk, rows]
        header = np.ascontiguousarray(block[:, :4]).view(np.float32)
        codes = block[:, 4 : 4 + self.n_vocab]
        return codes, header[:, 0:1] * codes.astype(np.float64) + header[:, 1:2]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def compare(saved: SavedLogits, model: Model, bos_id: int | None) -> dict[str, Any]:
    """Our model on the saved chunks: agreement, perplexity and KL divergence against llama.cpp's file."""
    agree = strict = count = 0
    nll = kld = 0.0
    seconds = 0.0
    for chunk in range(saved.n_chunk):
        tokens = saved.tokens[chunk].astype(np.int64)
        if bos_id is not None:
            tokens[0] = bos_id
        started = time.perf_counter()
        model.forward(tokens[: saved.first], 0)  # the unscored half: only the cache is needed
        logits = model.forward(tokens[saved.first : saved.n_ctx - 1], saved.first, all_logits=True)
        seconds += time.perf_counter() - started
        for begin in range(0, saved.scored, ROWS_PER_BLOCK):
            rows = slice(begin, min(begin + ROWS_PER_BLOCK, saved.scored))
            ours = log_softmax(logits[rows])
            codes, theirs = saved.log_probabilities(chunk, rows)
            index = np.arange(len(ours))
            top = ours.argmax(axis=-1)
            agree += int((codes[index, top] == codes.max(axis=-1)).sum())
            strict += int((top == codes.argmax(axis=-1)).sum())
            targets = saved.tokens[chunk, saved.first + 1 + rows.start : saved.first + 1 + rows.stop]
            nll -= float(ours[index, targets].sum())
            # llama-perplexity --kl-divergence's sum: over llama.cpp's tokens within 16 nats of its top
            kept = theirs > -16.0
            kld += float(np.where(kept, np.exp(np.where(kept, theirs, 0.0)) * (theirs - ours), 0.0).sum())
            count += len(ours)
    return {
        "positions": count,
        "top1_agreement": agree / count,
        "top1_agreement_first_index": strict / count,
        "perplexity": float(np.exp(nll / count)),
        "kl_divergence_mean": kld / count,
        "seconds": seconds,
    }


def run_model(name: str, text_file: Path, ctx: int, chunks: int, threads: int, work: Path) -> dict[str, Any]:
    source = hub.resolve(name, download=False)
    model_path = bf16_copy(source)
    logits_file = work / f"{name}.logits"
    llama = run_llama_perplexity(model_path, text_file, ctx, chunks, threads, logits_file)
    saved = SavedLogits(logits_file)
    tokenizer = Tokenizer.from_gguf(model_path)
    with Model.load(model_path, context_length=saved.n_ctx) as model:
        architecture = model.spec.architecture
        ours = compare(saved, model, tokenizer.bos_id if tokenizer.add_bos else None)
    del saved
    logits_file.unlink()
    difference = ours["perplexity"] / llama["perplexity"] - 1.0
    return {
        "model": name,
        "file": str(model_path),
        "architecture": architecture,
        "ctx": ctx,
        "chunks": chunks,
        **{key: ours[key] for key in ("positions", "top1_agreement", "top1_agreement_first_index",
                                      "kl_divergence_mean")},
        "perplexity_mlspecqd": ours["perplexity"],
        "perplexity_llama_cpp": llama["perplexity"],
        "perplexity_llama_cpp_error": llama["perplexity_error"],
        "perplexity_relative_difference": difference,
        "meets_goals": ours["top1_agreement"] >= GOAL_TOP1 and abs(difference) <= GOAL_PERPLEXITY,
        "mlspecqd_seconds": ours["seconds"],
        "llama_cpp_seconds": llama["seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="named models, comma-separated")
    parser.add_argument("--ctx", type=int, default=1024, help="tokens per chunk (the second half is scored)")
    parser.add_argument("--chunks", type=int, default=3, help="chunks per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", "--json-out", dest="out", type=Path, default=RESULTS / "llamacpp_agreement.json",
                        help="JSON file (default: bench/results/llamacpp_agreement.json)")
    args = parser.parse_args(argv)
    if not llamacpp.available():
        print(f"llama.cpp's tools are not in {llamacpp.BIN} (set LLAMA_CPP_BIN)", file=sys.stderr)
        return 2

    _native.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="mlspecqd-agreement-") as folder:
        work = Path(folder)
        text_file = work / "wiki.txt"
        text_file.write_text(calibration_text("wiki")[:TEXT_CHARACTERS], encoding="utf-8")
        for name in args.models.split(","):
            results.append(run_model(name, text_file, args.ctx, args.chunks, args.threads, work))
    report = {"benchmark": "llamacpp_agreement", "text": "wiki.utf8 (exllamav2 0.3.2)",
              "llama_cpp": llama_cpp_version(), "goals": {"top1_agreement": GOAL_TOP1,
                                                          "perplexity_relative_difference": GOAL_PERPLEXITY},
              "machine": describe_machine(args.threads), "results": results}
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print("| model | positions | top-1 agreement | ppl mlspecqd | ppl llama.cpp | ppl diff | mean KLD |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['positions']} | {100 * r['top1_agreement']:.2f}% "
              f"| {r['perplexity_mlspecqd']:.4f} | {r['perplexity_llama_cpp']:.4f} "
              f"| {100 * r['perplexity_relative_difference']:+.3f}% | {r['kl_divergence_mean']:.2e} |")
    return 0 if all(r["meets_goals"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
