"""Real-model tokenizers for the tests, each built once per session: reading a large vocabulary out of
a GGUF file takes seconds. Asking for one that is not cached skips the test."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from mlspecqd import hub
from mlspecqd.tokenizer import Tokenizer
from support.real_models import real_model_path


def real_tokenizer(name: str) -> Tokenizer:
    return _tokenizer(real_model_path(name))


@functools.cache
def _tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(path)


def transformers_tokenizer(name: str):
    """transformers' tokenizer for the same file, with the normalizer / pre-tokenizer of the model's
    published tokenizer.json that its GGUF loader leaves out (see bench/tokenizer_agreement.py)."""
    pytest.importorskip("transformers")
    return _transformers_tokenizer(real_model_path(name))


@functools.cache
def _transformers_tokenizer(path: Path):
    from tokenizers import normalizers, pre_tokenizers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    backend = tokenizer.backend_tokenizer
    if path.name.lower().startswith("qwen2"):
        backend.normalizer = normalizers.NFC()
    elif path.name.lower().startswith("smollm2"):
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    return tokenizer


def cached_text(name: str) -> str:
    """A calibration text that bench/corpora.py has fetched; skips rather than download in a test."""
    path = hub.cache_dir() / "data" / f"{name}.utf8"
    if not path.is_file():
        pytest.skip(f"{path} is not cached: run `python3 bench/run.py corpora`")
    return path.read_text(encoding="utf-8")
