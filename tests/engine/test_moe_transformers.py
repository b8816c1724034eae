"""Mixture-of-Experts models against an independent implementation: tiny random Qwen2-MoE, Qwen3-MoE and
Mixtral checkpoints made with transformers, written to GGUF as llama.cpp's converter writes them
(support/hf_moe.py), logits compared in float32. Skipped unless torch and transformers are installed
(`pip install mlspecqd[reference]`)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is not installed (the `reference` extra)")
pytest.importorskip("transformers", reason="transformers is not installed (the `reference` extra)")

from mlspecqd.engine import reference_model
from mlspecqd.engine.model import Model
from support import hf_moe

SEQUENCES, LENGTH = 4, 64


@pytest.fixture(scope="module", params=sorted(hf_moe.CONFIGS))
def converted(request, tmp_path_factory):
    """(transformers model, the native model loaded from its GGUF, family)."""
    family = request.param
    model = hf_moe.tiny_model(family, seed=0)
    path = tmp_path_factory.mktemp("hf") / f"{family}.gguf"
    hf_moe.write_gguf(model, family, path)
    return model, Model.load(path), family


def sequences() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, hf_moe.COMMON["vocab_size"], LENGTH) for _ in range(SEQUENCES)]


def test_reference_on_the_converted_file_is_transformers(converted):
    """The NumPy reference (float64, no rounding of activations) reads the GGUF as transformers runs the
    checkpoint: names, layouts, rope pairing, routing and the shared expert's gate agree to float32 noise."""
    model, native, _ = converted
    for tokens in sequences():
        expected = hf_moe.logits(model, tokens)
        reference = reference_model.forward(native.spec, native.tensors, tokens)
        assert np.abs(reference - expected).max() / expected.std() < 1e-5


def test_native_logits_agree_with_transformers(converted):
    """The native forward rounds matrix-product inputs to BF16, so its logits differ by about 1% of their
    spread, more at a position whose routing that rounding flips (a near tie); the argmax agrees."""
    model, native, _ = converted
    agree, positions, differences = 0, 0, []
    for tokens in sequences():
        expected = hf_moe.logits(model, tokens)
        actual = native.forward(tokens, 0, all_logits=True)
        agree += int((actual.argmax(axis=1) == expected.argmax(axis=1)).sum())
        positions += len(tokens)
        differences.extend(np.abs(actual - expected).max(axis=1) / expected.std())
    assert agree / positions >= 0.995
    assert np.median(differences) < 2e-2
