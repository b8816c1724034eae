"""A model at precision="mxfp4": the ML-SpecQD self-draft, cast at load time from its BF16 sibling."""

import numpy as np
import pytest

from mlspecqd import _native
from mlspecqd.engine import reference_model
from mlspecqd.engine.model import Model
from mlspecqd.engine.quant import mxfp4_to_float32
from support.decoder_fixtures import TOLERANCE_BF16_INPUTS, random_tensors, tiny_spec


def dequantized(model: Model) -> dict[str, np.ndarray]:
    """The model's weights as the reference reads them: MXFP4 blocks decoded to float32."""
    return {
        name: mxfp4_to_float32(array, array.shape[1] // 17 * 32) if array.dtype == np.uint8 else array
        for name, array in model.tensors.items()
    }


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3", "gemma3"])
@pytest.mark.parametrize("tied", [False, True])
def test_mxfp4_sibling_matches_reference_on_its_own_weights(architecture, tied):
    spec = tiny_spec(architecture, tied_output=tied)
    target = Model.from_arrays(spec, random_tensors(spec, seed=3))
    draft = target.sibling("mxfp4")
    tokens = np.random.default_rng(4).integers(0, spec.vocab_size, 30)
    expected = reference_model.forward(draft.spec, dequantized(draft), tokens, round_matmul_inputs=True)
    actual = draft.forward(tokens, 0, all_logits=True)
    assert np.abs(actual - expected).max() / expected.std() < TOLERANCE_BF16_INPUTS
    assert draft.tensors["output.weight"].dtype == np.uint8  # the LM head is cast too, even when tied
    assert draft.tensors["blk.0.ffn_up.weight"].dtype == np.uint8


def test_sibling_shares_embedding_and_norms():
    spec = tiny_spec("qwen2", tied_output=True)
    target = Model.from_arrays(spec, random_tensors(spec))
    draft = target.sibling("mxfp4")
    for name in ("token_embd.weight", "output_norm.weight", "blk.1.attn_q.bias"):
        assert draft.tensors[name] is target.tensors[name]
    assert "output.weight" not in target.tensors  # the target's tied head is untouched


def test_mxfp4_head_can_stay_bf16():
    spec = tiny_spec("llama")
    draft = Model.from_arrays(spec, random_tensors(spec), "mxfp4", mxfp4_head=False)
    assert draft.tensors["output.weight"].dtype == np.uint16
    assert draft.tensors["blk.0.attn_q.weight"].dtype == np.uint8


@pytest.mark.parametrize("threads", [1, 2])
def test_mxfp4_model_is_batch_invariant(threads):
    spec = tiny_spec("qwen2")
    draft = Model.from_arrays(spec, random_tensors(spec, seed=5), "mxfp4")
    tokens = np.random.default_rng(6).integers(0, spec.vocab_size, 24)
    saved = _native.num_threads()
    _native.set_num_threads(threads)
    try:
        whole = draft.forward(tokens, 0, all_logits=True)
        for split in (1, 7, 17):
            draft.forward(tokens[:split], 0, all_logits=True)
            rest = draft.forward(tokens[split:], split, all_logits=True)
            assert np.array_equal(rest, whole[split:])
    finally:
        _native.set_num_threads(saved)
