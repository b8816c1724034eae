"""llama.cpp, the competitor, run in the same benchmark as mlspecqd: its binaries (built by
../shared/tools/build_llamacpp_reference.sh), the BF16 and MXFP4 copies of a model that its
llama-quantize makes (cached next to the source file), and parsers for what its tools print."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

BIN = Path(os.environ.get("LLAMA_CPP_BIN", Path.home() / ".cache" / "llamacpp-ref" / "bin"))
# The same llama.cpp built for AVX2 with AVX-VNNI and no AVX-512 (../shared/tools/build_llamacpp_reference.sh avx2):
# what llama.cpp ships for AI PCs.
AVX2_BIN = Path(os.environ.get("LLAMA_CPP_AVX2_BIN", Path.home() / ".cache" / "llamacpp-ref-avx2" / "bin"))

# llama-quantize arguments for each copy (../shared/MODELS.md gives the MXFP4 recipe).
_LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
QUANTIZE_ARGS = {
    "bf16": ["BF16"],
    "mxfp4": [arg for name in _LINEAR for arg in ("--tensor-type", f"{name}=mxfp4")]
    + ["--output-tensor-type", "mxfp4", "MXFP4_MOE"],
}


def available(folder: Path | None = None) -> bool:
    """Whether the tools the benchmarks run are in `folder` (default: BIN)."""
    tools = ("llama-bench", "llama-completion", "llama-speculative", "llama-quantize")
    return all(((folder or BIN) / tool).exists() for tool in tools)


def quantized_copy(source: Path, kind: str) -> Path:
    """A `kind` ("bf16" or "mxfp4") copy of `source` made by llama-quantize, cached next to it."""
    target = source.with_name(f"{source.stem}.llamacpp-{kind}.gguf")
    if not target.exists():
        *options, file_type = QUANTIZE_ARGS[kind]
        partial = target.with_name(target.name + ".partial")
        subprocess.run([str(BIN / "llama-quantize"), "--allow-requantize", *options, str(source), str(partial),
                        file_type], check=True, capture_output=True)
        partial.replace(target)
    return target


def bench(model: Path, threads: int, prompt_tokens: int, decode_tokens: int) -> dict[str, float]:
    """llama-bench's pp and tg rates (tokens/s) for one model."""
    out = subprocess.run([str(BIN / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", str(prompt_tokens),
                          "-n", str(decode_tokens), "-o", "json"], check=True, capture_output=True, text=True).stdout
    rates = {}
    for row in json.loads(out):
        key = "prompt_tokens_per_second" if row["n_prompt"] else "decode_tokens_per_second"
        rates[key] = row["avg_ts"]
    return rates


@dataclass
class Generation:
    predicted_n: int
    predicted_seconds: float
    drafted: int = 0
    accepted: int = 0


def completion(model: Path, prompt: str, max_new_tokens: int, threads: int, context: int) -> Generation:
    """Greedy plain decoding with llama-completion; its own timing of the generated tokens."""
    err = _run("llama-completion", "-m", str(model), "-p", prompt, "-n", str(max_new_tokens), "--temp", "0",
               "-t", str(threads), "-c", str(context), "-no-cnv")
    match = re.search(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs", err)
    if not match:
        raise RuntimeError("llama-completion printed no eval time:\n" + err[-2000:])
    return Generation(int(match.group(2)), float(match.group(1)) / 1e3)


def speculative(target: Path, draft: Path, prompt: str, max_new_tokens: int, threads: int, context: int,
                draft_max: int) -> Generation:
    """Greedy speculative decoding with llama-speculative; its own decode timing and acceptance."""
    err = _run("llama-speculative", "-m", str(target), "-md", str(draft), "-p", prompt, "-n", str(max_new_tokens),
               "--temp", "0", "-t", str(threads), "-c", str(context), "--spec-draft-n-max", str(draft_max))
    decoded = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", err)
    drafted, accepted = re.search(r"n_drafted = (\d+)", err), re.search(r"n_accept\s*= (\d+)", err)
    if not (decoded and drafted and accepted):
        raise RuntimeError("llama-speculative printed no decode summary:\n" + err[-2000:])
    return Generation(int(decoded.group(1)), float(decoded.group(2)), int(drafted.group(1)), int(accepted.group(1)))


def _run(tool: str, *args: str) -> str:
    result = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"{tool} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result.stderr
