"""Seed corpora for the fuzz targets: small valid inputs from which mutation starts.

    python tests/fuzz/make_seeds.py OUT_DIR

writes OUT_DIR/<target>/<seed> for every target (fuzz_<target>.py). GGUF seeds are tiny models and
vocabularies written with gguf.GGUFWriter; chat templates include those of the real checkpoints in
the mlspecqd cache when they are there. Each seed is a few KB at most, so mutation stays fast.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness

from mlspecqd.gguf import ModelSpec, RopeScaling, expected_tensor_shapes
from mlspecqd.tokenizer import Tokenizer, TokenizerError
from support.gguf_fixtures import QUANTIZABLE_TYPES, model_spec, random_blocks

# The smallest model every dense architecture accepts: one layer, 32-wide, two query heads sharing one
# key/value head, 32 tokens; rows of 32 values take every 32-value block type.
TINY_SPEC = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "d_ff": 32, "vocab_size": 32,
             "context_length": 32}
GPT2_TOKENS = ["a", "b", "c", "\u0120", "ab", "\u0120a", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "  "]
GPT2_TYPES = [1, 1, 1, 1, 1, 1, 3, 3, 3, 4]
GPT2_MERGES = ["a b", "\u0120 a"]
# SentencePiece accepts byte tokens only as all 256 of them, too many for a seed: none here.
SPM_TOKENS = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab", "<start_of_turn>"]
SPM_TYPES = [2, 3, 3, 1, 1, 1, 1, 1, 4]
SPM_SCORES = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -1.5, -2.5, 0.0]
TEMPLATE_KEY = "tokenizer.chat_template"


def _writer(path: Path, architecture: str | None) -> gguf.GGUFWriter:
    writer = gguf.GGUFWriter(path, architecture or "none")
    if architecture is None:
        del writer.kv_data[0]["general.architecture"]
    return writer


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def add_gpt2_vocabulary(writer: gguf.GGUFWriter, pre: str = "qwen2") -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(GPT2_TOKENS)
    writer.add_token_types(GPT2_TYPES)
    writer.add_token_merges(GPT2_MERGES)
    writer.add_bos_token_id(6)
    writer.add_eos_token_id(8)
    writer.add_add_bos_token(False)
    writer.add_string(TEMPLATE_KEY, "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                                    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def add_sentencepiece_vocabulary(writer: gguf.GGUFWriter) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_token_list(SPM_TOKENS)
    writer.add_token_types(SPM_TYPES)
    writer.add_token_scores(SPM_SCORES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_space_prefix(False)


def write_tiny_model(path: Path, architecture: str = "llama", tensor_type: GGMLQuantizationType =
                     GGMLQuantizationType.Q8_0, vocabulary: Callable[[gguf.GGUFWriter], None] | None = None,
                     tied: bool = False, llama3_rope: bool = False, seed: int = 0) -> None:
    """A one-layer model of TINY_SPEC's sizes; matrices of `tensor_type`, 1-D tensors F32."""
    spec = model_spec(architecture, {**TINY_SPEC, "tied_output": tied or architecture == "gemma3",
                                     "head_dim": 16 if architecture in ("qwen3", "gemma3") else None})
    head_dim = spec["head_dim"] or spec["d_model"] // spec["n_heads"]
    rope_scaling = RopeScaling("llama3") if llama3_rope else RopeScaling()
    sizes = {name: spec[name] for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size",
                                           "context_length", "tied_output", "qkv_bias", "qk_norm")}
    shapes = expected_tensor_shapes(ModelSpec(architecture=architecture, head_dim=head_dim, rope_dim=head_dim,
                                              rope_style="neox", rope_scaling=rope_scaling, rope_base=10000.0,
                                              norm_eps=1e-6, post_norms=architecture == "gemma3", **sizes))
    rng = np.random.default_rng(seed)
    writer = _writer(path, architecture)
    writer.add_block_count(spec["n_layers"])
    writer.add_context_length(spec["context_length"])
    writer.add_embedding_length(spec["d_model"])
    writer.add_head_count(spec["n_heads"])
    writer.add_head_count_kv(spec["n_kv_heads"])
    writer.add_feed_forward_length(spec["d_ff"])
    writer.add_layer_norm_rms_eps(1e-6)
    if spec["head_dim"]:
        writer.add_key_length(head_dim)
    if architecture == "gemma3":
        writer.add_sliding_window(4)
    if vocabulary is not None:
        vocabulary(writer)
    for name, shape in shapes.items():
        ggml_type = tensor_type if len(shape) > 1 else GGMLQuantizationType.F32
        if ggml_type in QUANTIZABLE_TYPES:
            scale = 1.0 if name.endswith("norm.weight") else 0.2
            values = (scale * (1.0 + rng.standard_normal(shape))).astype(np.float32)
            raw = gguf.quants.quantize(values, ggml_type)
        else:
            n_blocks = int(np.prod(shape)) // gguf.GGML_QUANT_SIZES[ggml_type][0]
            raw = random_blocks(ggml_type, n_blocks, rng).reshape(*shape[:-1], -1)
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=ggml_type)
    _finish(writer)


def write_tensor_zoo(path: Path, seed: int = 0) -> None:
    """No model: one small tensor of every type the package dequantizes, and metadata of every type."""
    rng = np.random.default_rng(seed)
    writer = _writer(path, None)
    writer.add_uint32("general.alignment", 32)
    writer.add_array("zoo.strings", ["", "x", "\u00e9"])
    writer.add_array("zoo.floats", [1.5, -0.0])
    writer.add_array("zoo.ints", [1, 2, 3])
    writer.add_array("zoo.bools", [True, False])
    writer.add_int8("zoo.i8", -1)
    writer.add_uint64("zoo.u64", 2**40)
    writer.add_float64("zoo.f64", 0.25)
    writer.add_bool("zoo.bool", True)
    for ggml_type in sorted(gguf.GGML_QUANT_SIZES, key=int):
        block_elements, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
        if ggml_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
            raw = gguf.quants.quantize(rng.standard_normal((2, 4)).astype(np.float32), ggml_type)
        elif block_elements * block_bytes <= 256 * 256:
            raw = random_blocks(ggml_type, 1, rng).reshape(1, block_bytes)
        else:
            continue
        writer.add_tensor(f"t.{ggml_type.name.lower()}", raw, raw_shape=raw.shape, raw_dtype=ggml_type)
    _finish(writer)


def write_vocabulary_only(path: Path, vocabulary: Callable[[gguf.GGUFWriter], None]) -> None:
    writer = _writer(path, None)
    vocabulary(writer)
    _finish(writer)


def gguf_parse_seeds(out: Path) -> None:
    header_only = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
    (out / "header-only.gguf").write_bytes(header_only)
    write_tensor_zoo(out / "tensor-zoo.gguf")
    write_vocabulary_only(out / "gpt2-vocabulary.gguf", add_gpt2_vocabulary)
    write_vocabulary_only(out / "sentencepiece-vocabulary.gguf", add_sentencepiece_vocabulary)
    write_tiny_model(out / "llama-q4_0.gguf", "llama", GGMLQuantizationType.Q4_0, add_gpt2_vocabulary)


def gguf_model_seeds(out: Path) -> None:
    write_tiny_model(out / "llama-q8_0.gguf", "llama", GGMLQuantizationType.Q8_0)
    write_tiny_model(out / "llama-f16-tied.gguf", "llama", GGMLQuantizationType.F16, tied=True)
    write_tiny_model(out / "llama3-rope-q4_1.gguf", "llama", GGMLQuantizationType.Q4_1, llama3_rope=True)
    write_tiny_model(out / "qwen2-q5_0.gguf", "qwen2", GGMLQuantizationType.Q5_0)
    write_tiny_model(out / "qwen3-mxfp4.gguf", "qwen3", GGMLQuantizationType.MXFP4)
    write_tiny_model(out / "qwen2-bf16-vocab.gguf", "qwen2", GGMLQuantizationType.BF16, add_gpt2_vocabulary)
    write_tiny_model(out / "gemma3-q8_0.gguf", "gemma3", GGMLQuantizationType.Q8_0)


# Tokenizer inputs start with a mode byte (see fuzz_tokenizer.py): 0 encode (then the tokenizer and
# flags), 1 decode ids, 2 a vocabulary made of the input, 3 the special-token splitter.
def tokenizer_seeds(out: Path) -> None:
    texts = ["Hello, world! It's 2024.", "  leading spaces\n\n\ttabs", "<|im_start|>user\nhi<|im_end|>",
             "caf\u00e9 \u00c5ngstr\u00f6m \u65e5\u672c\u8a9e \U0001f600", "def f(x):\n    return x**2  # ok",
             "a\u0301\u0301 \u0130 \ufb01 \u2028", "1234567890 3.14159 \u0663\u0664"]
    for index, text in enumerate(texts):
        for tokenizer in range(3):
            (out / f"encode-{index}-{tokenizer}").write_bytes(bytes([0, tokenizer, index % 4]) + text.encode())
    for tokenizer in range(3):
        ids = np.array([0, 1, 2, 255, 256, 1000, 5, 6, 100000, -1], "<i4")
        (out / f"decode-{tokenizer}").write_bytes(bytes([1, tokenizer, tokenizer % 2]) + ids.tobytes())
    (out / "vocabulary").write_bytes(bytes([2]) + bytes(range(1, 200)) + b"a b ab")
    (out / "special").write_bytes(bytes([3, 3, 5]) + b"<|a|>" + bytes([2]) + b"<|" + b"x<|a|><|y")


TEMPLATES = [
    "{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}",
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{% set ns = namespace(s=m.content) %}"
    "{% elif m.role == 'user' %}[INST] {{ m.content | trim }} [/INST]{% else %}{{ m.content }}{{ eos_token }}"
    "{% endif %}{% endfor %}",
    "{%- for m in messages -%}{%- if loop.first and m.role != 'system' -%}{{ raise_exception('system first') }}"
    "{%- endif -%}{{ m | tojson }}{%- endfor -%}{{ strftime_now('%Y-%m-%d') }}",
    "{% macro show(x, depth) %}{% if depth > 0 %}[{{ show(x, depth - 1) }}]{% else %}{{ x }}{% endif %}"
    "{% endmacro %}{{ show(messages[0].content, 5) }}",
    "{% for i in range(10) %}{% for m in messages|reverse %}{{ loop.index }}{{ m.content[:3] }}{% endfor %}"
    "{% endfor %}{{ messages|map(attribute='role')|join(',') }}{{ '%s-%d' % ('a', 3) }}{{ 'x' * 3 }}",
]


def real_chat_templates() -> list[str]:
    """The chat templates of the real checkpoints in the mlspecqd cache (none when it is empty)."""
    from mlspecqd import hub
    from mlspecqd.gguf import GGUFError, open_gguf

    templates = []
    cache = hub.cache_dir()
    for path in sorted(cache.glob("*.gguf")) if cache.is_dir() else []:
        try:
            with open_gguf(path) as file:
                template = file.metadata.get(TEMPLATE_KEY)
        except GGUFError:
            continue
        if isinstance(template, str) and template not in templates:
            templates.append(template)
    return templates


# Chat-template inputs: a mode byte, then the template (mode 0) or the messages (mode 1, see the target).
def chat_template_seeds(out: Path) -> None:
    for index, template in enumerate(TEMPLATES + real_chat_templates()):
        (out / f"template-{index}").write_bytes(b"\x00" + template.encode("utf-8"))
    (out / "messages").write_bytes(b"\x01" + json.dumps([{"role": "user", "content": "hi"}]).encode())


def batch_request_seeds(out: Path) -> None:
    requests = [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0.5, "seed": 1}},
        {"custom_id": "b", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": "Hello", "max_tokens": 3, "stop": ["\n"], "top_k": 5, "top_p": 0.9}},
        {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "system", "content": [{"type": "text", "text": "x"}]}], "n": 1}},
    ]
    for request in requests:
        (out / f"request-{request['custom_id']}").write_bytes(json.dumps(request).encode())
    (out / "not-json").write_bytes(b'{"custom_id": ')
    (out / "out-file").write_bytes(b'#{"custom_id": "a"}\n{"custom_id": 1}\n[')


# libFuzzer dictionaries (-dict=): words a mutation may insert whole.
DICTIONARIES = {
    "chat_template": ["{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", " for ", " in ", "endfor", " if ", "elif",
                      "else", "endif", " set ", " macro ", "endmacro", " call ", "endcall", "namespace(", "loop.",
                      "range(", "messages", "message", ".role", ".content", "|tojson", "|join", "|length", "|trim",
                      "|indent(", "|center(", "|replace(", "|format(", "|batch(", "|slice(", "|map(", "|list",
                      "|selectattr(", "raise_exception(", "strftime_now(", " ~ ", " * ", " ** ", " % ", " + ",
                      "recursive", "caller()", "loop(", ".format(", ".join(", ".replace(", ".split(", "[::-1]",
                      " is defined", " is string", "add_generation_prompt", "bos_token", "tools", "9999999"],
    "batch_request": ['"custom_id"', '"method"', '"POST"', '"url"', '"/v1/chat/completions"', '"/v1/completions"',
                      '"body"', '"messages"', '"role"', '"content"', '"prompt"', '"max_tokens"',
                      '"max_completion_tokens"', '"temperature"', '"top_k"', '"top_p"', '"min_p"', '"seed"',
                      '"repeat_penalty"', '"repeat_last_n"', '"stop"', '"stream"', '"n"', '"type"', '"text"',
                      "1e400", "-1", "null", "true", "[[[[", "\\ud800", "18446744073709551616"],
}


def write_dictionary(path: Path, words: list[str]) -> None:
    path.write_text("".join(json.dumps(word) + "\n" for word in words))


SEEDS: dict[str, Callable[[Path], None]] = {
    "gguf_parse": gguf_parse_seeds,
    "gguf_model": gguf_model_seeds,
    "tokenizer": tokenizer_seeds,
    "chat_template": chat_template_seeds,
    "batch_request": batch_request_seeds,
}


def write_seeds(out_dir: Path, targets: Iterable[str] = SEEDS) -> None:
    for target in targets:
        folder = out_dir / target
        folder.mkdir(parents=True, exist_ok=True)
        SEEDS[target](folder)
        if target in DICTIONARIES:
            write_dictionary(out_dir / f"{target}.dict", DICTIONARIES[target])


def check_seed_vocabularies() -> None:
    """The seed vocabularies build tokenizers (a seed the package refuses would start from nothing)."""
    for add in (add_gpt2_vocabulary, add_sentencepiece_vocabulary):
        path = _harness.SCRATCH / "vocabulary.gguf"
        write_vocabulary_only(path, add)
        try:
            Tokenizer.from_gguf(path)
        except TokenizerError as error:
            raise SystemExit(f"seed vocabulary refused: {error}") from None


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} OUT_DIR")
    check_seed_vocabularies()
    write_seeds(Path(sys.argv[1]))
