"""The native decoder against the NumPy reference (mlspecqd/engine/reference_model.py) on tiny random models
(Gemma 3's sliding-window layers among them), its batch invariance (equality), the key/value cache, and
its refusals of bad input."""

from __future__ import annotations

import gc
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from mlspecqd import _native
from mlspecqd.engine import reference_model
from mlspecqd.engine.model import Model
from mlspecqd.engine.weight_layout import in_column_blocks
from mlspecqd.gguf import RopeScaling
from support.decoder_fixtures import (
    TOLERANCE_BF16_INPUTS,
    TOLERANCE_EXACT_INPUTS,
    bf16_bits,
    random_tensors,
    tiny_spec,
)
from support.gguf_fixtures import models_dir, write_model_gguf

ARCHITECTURE_CASES = {
    "llama-mha-tied": tiny_spec("llama", n_kv_heads=4, tied_output=True),
    "llama-gqa4-untied": tiny_spec("llama", n_heads=8, n_kv_heads=2, head_dim=8, rope_dim=8),
    "llama-partial-rope": tiny_spec("llama", rope_dim=8),
    "llama-llama3-scaling": tiny_spec("llama", rope_base=500000.0, rope_scaling=RopeScaling("llama3", factor=8.0)),
    "llama-linear-scaling": tiny_spec("llama", rope_scaling=RopeScaling("linear", factor=4.0)),
    "llama-attention-scale": tiny_spec("llama", attention_scale=0.5),
    "qwen2-bias-gqa2": tiny_spec("qwen2"),
    "qwen2-tied-odd-head-dim": tiny_spec("qwen2", n_heads=6, n_kv_heads=3, head_dim=24, rope_dim=24, tied_output=True),
    "qwen3-qk-norm-gqa2-tied": tiny_spec("qwen3", tied_output=True),
    "qwen3-gqa8": tiny_spec("qwen3", n_heads=8, n_kv_heads=1, head_dim=8, rope_dim=8),
    # Gemma 3: 4 layers, every third global, the others in a window of 7 positions (the sequences are 40).
    "gemma3-sliding-window": tiny_spec("gemma3"),
    "gemma3-270m-shaped": tiny_spec("gemma3", n_heads=4, n_kv_heads=1, head_dim=32, rope_dim=32, n_layers=6,
                                    sliding_window_pattern=6, sliding_window=12, attention_scale=32**-0.5),
    "gemma3-window-of-one": tiny_spec("gemma3", sliding_window=1),
    "gemma3-window-beyond-the-text": tiny_spec("gemma3", sliding_window=100),
    "gemma3-every-layer-sliding": tiny_spec("gemma3", n_layers=2, sliding_window_pattern=3),
    "gemma3-linear-scaling-on-global-layers": tiny_spec("gemma3", rope_scaling=RopeScaling("linear", factor=8.0)),
    "gemma3-untied": tiny_spec("gemma3", tied_output=False),
}


def gemm_rounds_inputs_to_bf16() -> bool:
    """Whether the active GEMM kernel rounds its float32 input to BF16 (1 + 2^-12 is not a BF16 value)."""
    x = np.array([[1.0 + 2.0**-12]], dtype=np.float32)
    one = np.array([[0x3F80]], dtype=np.uint16)
    return float(_native.matmul_bf16(x, one)[0, 0]) == 1.0


def assert_matches_reference(model: Model, tensors: dict[str, np.ndarray], tokens: np.ndarray) -> None:
    """Runs `tokens` as a prompt of 25 and one batch of the rest (the cache as well as the prompt path)
    and compares every position's logits with the reference's."""
    rounds = gemm_rounds_inputs_to_bf16()
    expected = reference_model.forward(model.spec, tensors, tokens, round_matmul_inputs=rounds)
    first = model.forward(tokens[:25], 0, all_logits=True)
    second = model.forward(tokens[25:], 25, all_logits=True)
    actual = np.concatenate([first, second])
    error = np.abs(actual - expected).max() / expected.std()
    assert error < (TOLERANCE_BF16_INPUTS if rounds else TOLERANCE_EXACT_INPUTS), f"error {error:.1e} of the spread"
    assert model.n_past == len(tokens)


@pytest.mark.parametrize("case", list(ARCHITECTURE_CASES))
def test_matches_reference(case):
    spec = ARCHITECTURE_CASES[case]
    tensors = random_tensors(spec, seed=1)
    tokens = np.random.default_rng(2).integers(0, spec.vocab_size, 40)
    assert_matches_reference(Model.from_arrays(spec, tensors), tensors, tokens)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3", "gemma3"])
def test_load_gguf_matches_reference(tmp_path, architecture):
    """Model.load on a synthetic Q8_0 GGUF: the same bits as the stored weights upcast to BF16 and run
    from arrays, and the reference's logits."""
    path = tmp_path / f"{architecture}.gguf"
    stored = write_model_gguf(path, architecture, tensor_type=GGMLQuantizationType.Q8_0)
    tensors = {name: bf16_bits(values) if values.ndim == 2 else values for name, values in stored.items()}
    tokens = np.random.default_rng(4).integers(0, len(stored["token_embd.weight"]), 40)
    with Model.load(path, context_length=64) as model:
        assert model.spec.architecture == architecture and model.context_length == 64
        from_arrays = Model.from_arrays(model.spec, tensors, context_length=64)
        assert np.array_equal(model.forward(tokens, 0, all_logits=True),
                              from_arrays.forward(tokens, 0, all_logits=True))
        assert_matches_reference(model, tensors, tokens)


def test_load_stores_long_k_weights_in_column_blocks_with_the_same_bits(tmp_path):
    """d_ff = 2048 is above weight_layout.MAX_ROW_MAJOR_K: Model.load keeps ffn_down (K = d_ff) in
    blocks of 512 columns, and the logits, and those of its MXFP4 sibling, are the same bits as from
    row-major arrays; loading at precision="mxfp4" casts the same blocks."""
    path = tmp_path / "long_k.gguf"
    stored = write_model_gguf(path, "qwen2", spec_overrides={"d_ff": 2048}, tensor_type=GGMLQuantizationType.Q8_0)
    tensors = {name: bf16_bits(values) if values.ndim == 2 else values for name, values in stored.items()}
    tokens = np.random.default_rng(5).integers(0, len(stored["token_embd.weight"]), 40)
    with Model.load(path, context_length=64) as model:
        assert model.tensors["blk.0.ffn_down.weight"].shape == (4, 64, 512)
        assert model.tensors["blk.0.ffn_up.weight"].shape == (2048, 64)  # K = d_model: row-major
        assert all(a.ctypes.data % 64 == 0 for a in model.tensors.values())  # every array on a cache line
        from_arrays = Model.from_arrays(model.spec, tensors, context_length=64)
        assert np.array_equal(model.forward(tokens, 0, all_logits=True),
                              from_arrays.forward(tokens, 0, all_logits=True))
        draft, reference_draft = model.sibling("mxfp4"), from_arrays.sibling("mxfp4")
        assert np.array_equal(draft.tensors["blk.0.ffn_down.weight"],
                              reference_draft.tensors["blk.0.ffn_down.weight"])
        assert np.array_equal(draft.forward(tokens, 0, all_logits=True),
                              reference_draft.forward(tokens, 0, all_logits=True))
    with Model.load(path, precision="mxfp4", context_length=64) as loaded_draft:
        assert np.array_equal(loaded_draft.tensors["blk.0.ffn_down.weight"],
                              reference_draft.tensors["blk.0.ffn_down.weight"])


def test_reference_rope_styles_differ():
    """Guards the test above: the two rope pairings must give different models."""
    spec = tiny_spec("llama")
    tensors = random_tensors(spec)
    tokens = [3, 1, 4, 1, 5, 9]
    interleaved = reference_model.forward(spec, tensors, tokens)
    neox = reference_model.forward(replace(spec, rope_style="neox"), tensors, tokens)
    assert np.abs(interleaved - neox).max() > 0.1 * interleaved.std()


@pytest.mark.parametrize("change", [
    {"sliding_window": 0}, {"sliding_window": 8}, {"sliding_window_pattern": 2}, {"rope_base_sliding": 1e6},
    {"post_norms": False}, {"activation": "silu"}, {"embedding_scale": 1.0},
])
def test_reference_gemma3_features_matter(change):
    """Guards the Gemma 3 cases above: each feature, changed alone, moves the logits of a 40-token text
    well beyond the tolerance, so the native decoder cannot match the reference while getting it wrong."""
    spec = tiny_spec("gemma3")
    tensors = random_tensors(spec, seed=1)
    tokens = np.random.default_rng(2).integers(0, spec.vocab_size, 40)
    expected = reference_model.forward(spec, tensors, tokens)
    changed = reference_model.forward(replace(spec, **change), tensors, tokens)
    assert np.abs(changed - expected).max() > 3 * TOLERANCE_BF16_INPUTS * expected.std()


def test_gemma3_refuses_missing_post_norms():
    spec = tiny_spec("gemma3")
    tensors = {k: v for k, v in random_tensors(spec).items() if k != "blk.2.post_ffw_norm.weight"}
    with pytest.raises(ValueError, match=r"missing tensor 'blk.2.post_ffw_norm.weight'"):
        Model.from_arrays(spec, tensors)


# Prefixes for the batches: a short one, and one whose batches straddle the attention kernel's key
# block of 128 positions (and its groups of 64).
BATCH_PREFIXES = (5, 120)


def batch_invariance_model(architecture: str = "qwen2") -> tuple[Model, np.ndarray]:
    # Widths above 64 rows so that two threads split every matrix product; three query heads per
    # key/value head. Gemma 3's local layers attend within 45 positions: windows that start anywhere in a
    # key block of 32, the later batches entirely past the first window.
    sizes = dict(d_model=96, n_heads=6, n_kv_heads=2, head_dim=16, rope_dim=16, d_ff=320, vocab_size=300)
    extra = dict(sliding_window=45, sliding_window_pattern=2) if architecture == "gemma3" else {}
    spec = tiny_spec(architecture, **sizes, **extra)
    tokens = np.random.default_rng(7).integers(0, spec.vocab_size, max(BATCH_PREFIXES) + 17)
    return Model.from_arrays(spec, random_tensors(spec, seed=3)), tokens


@pytest.mark.parametrize("architecture", ["qwen2", "gemma3"])
@pytest.mark.parametrize("isa", sorted({"scalar", _native.best_isa()}))
def test_batch_invariance_bit_exact(isa, architecture):
    """Position p's logits are the same bits alone (T = 1), in a batch of M = 1..17 after a prefix, or in
    one prompt, with one or two threads."""
    _native.set_isa(isa)
    model, tokens = batch_invariance_model(architecture)
    _native.set_num_threads(1)
    alone = np.concatenate([model.forward(tokens[p : p + 1], p) for p in range(len(tokens))])
    for threads in (1, 2):
        _native.set_num_threads(threads)
        prompt = model.forward(tokens, 0, all_logits=True)
        assert np.array_equal(prompt, alone), f"{threads} threads: whole prompt differs from one at a time"
        for prefix in BATCH_PREFIXES:
            model.forward(tokens[:prefix], 0)
            for M in range(1, 18):
                batch = model.forward(tokens[prefix : prefix + M], prefix, all_logits=True)
                assert np.array_equal(batch, alone[prefix : prefix + M]), f"prefix {prefix}, M={M}, {threads} threads"
                last = model.forward(tokens[prefix : prefix + M], prefix, all_logits=False)
                assert np.array_equal(last, alone[prefix + M - 1 : prefix + M]), f"last row, prefix {prefix}, M={M}"


def test_truncate_then_reforward_gives_same_bits():
    model, tokens = batch_invariance_model()
    before = model.forward(tokens, 0, all_logits=True)
    model.truncate(9)
    assert model.n_past == 9
    # different tokens overwrite positions 9.. ; going back and re-running the originals restores them
    model.forward(np.flip(tokens[9:]), 9)
    model.truncate(9)
    again = model.forward(tokens[9:], 9, all_logits=True)
    assert np.array_equal(again, before[9:])
    # forward with start < n_past truncates implicitly
    assert np.array_equal(model.forward(tokens[4:6], 4, all_logits=True), before[4:6])
    assert model.n_past == 6


def test_weights_are_kept_alive_not_copied():
    spec = tiny_spec("llama")
    tensors = random_tensors(spec)
    tokens = [1, 2, 3]
    model = Model.from_arrays(spec, tensors)
    expected = model.forward(tokens, 0)
    del tensors
    gc.collect()
    model2 = Model.from_arrays(spec, random_tensors(spec, seed=9))  # would reuse the memory had it been freed
    assert np.array_equal(model.forward(tokens, 0), expected)
    assert not np.array_equal(model2.forward(tokens, 0), expected)


@pytest.fixture(scope="module")
def small_model() -> Model:
    spec = tiny_spec("llama", context_length=32)
    return Model.from_arrays(spec, random_tensors(spec))


@pytest.mark.parametrize("tokens, start, message", [
    ([], 0, r"tokens is empty \(T = 0\)"),
    ([1, 2], 3, r"start = 3 must be in \[0, n_past = 2\]"),
    ([1, 2], -1, r"start = -1 must be in \[0, n_past = 2\]"),
    (list(range(31)), 2, r"start \+ T = 2 \+ 31 exceeds max_context = 32"),
    ([1, 160, 2], 2, r"token id 160 at index 1 is outside the vocabulary \[0, 160\)"),
    ([1, -4], 2, r"token id -4 at index 1 is outside the vocabulary"),
    ([[1, 2]], 2, r"tokens must be 1-D"),
    ([1.5], 2, r"tokens must be integers"),
])
def test_forward_refuses_bad_input(small_model, tokens, start, message):
    small_model.forward([5, 6], 0)
    with pytest.raises(ValueError, match=message):
        small_model.forward(tokens, start)
    assert small_model.n_past == 2  # a refused call leaves the cache alone


def test_truncate_refuses_growing(small_model):
    small_model.forward([5, 6], 0)
    with pytest.raises(ValueError, match=r"truncate\(3\): the cache holds 2 positions"):
        small_model.truncate(3)
    with pytest.raises(ValueError, match=r"truncate\(-1\)"):
        small_model.truncate(-1)


def test_closed_model_refuses_calls():
    spec = tiny_spec("llama")
    with Model.from_arrays(spec, random_tensors(spec)) as model:
        model.forward([1, 2], 0)
    with pytest.raises(ValueError, match="the model is closed"):
        model.forward([3], 2)
    with pytest.raises(ValueError, match="the model is closed"):
        model.truncate(0)


def test_context_length_capped_at_trained_context(small_model):
    assert small_model.context_length == 32
    spec = tiny_spec("llama")
    assert Model.from_arrays(spec, random_tensors(spec), context_length=100).context_length == 100
    with pytest.raises(ValueError, match="context_length must be at least 1"):
        Model.from_arrays(spec, random_tensors(spec), context_length=0)


def test_bad_weights_are_named():
    spec = tiny_spec("qwen2")
    tensors = random_tensors(spec)
    missing = {k: v for k, v in tensors.items() if k != "blk.1.attn_k.bias"}
    with pytest.raises(ValueError, match=r"missing tensor 'blk.1.attn_k.bias'"):
        Model.from_arrays(spec, missing)
    wrong_shape = dict(tensors, **{"blk.0.ffn_up.weight": tensors["blk.0.ffn_up.weight"][:, :32].copy()})
    with pytest.raises(ValueError, match=r"weights\['blk.0.ffn_up.weight'\] has shape \(96, 32\), expected \(96, 64\)"):
        Model.from_arrays(spec, wrong_shape)
    down = tensors["blk.0.ffn_down.weight"]  # (64, 96)
    too_few_blocks = dict(tensors, **{"blk.0.ffn_down.weight": in_column_blocks(down, 32)[:2].copy()})
    with pytest.raises(ValueError, match=r"ffn_down.weight'\] has shape \(2, 64, 32\), expected \(3, 64, 32\)"):
        Model.from_arrays(spec, too_few_blocks)
    uneven_blocks = dict(tensors, **{"blk.0.ffn_down.weight": np.zeros((2, 64, 40), np.uint16)})
    with pytest.raises(ValueError, match=r"\(2, 64, 40\): blocks of 40 columns do not divide K = 96"):
        Model.from_arrays(spec, uneven_blocks)
    wrong_dtype = dict(tensors, **{"output_norm.weight": tensors["output_norm.weight"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"weights\['output_norm.weight'\] must be float32, got float64"):
        Model.from_arrays(spec, wrong_dtype)
    float_matrix = dict(tensors, **{"blk.0.attn_q.weight": np.zeros((64, 64), np.float32)})
    with pytest.raises(ValueError, match=r"weights\['blk.0.attn_q.weight'\]: a linear weight must be uint16"):
        Model.from_arrays(spec, float_matrix)
    llama3 = replace(spec, rope_scaling=RopeScaling("llama3", factor=8.0))
    with pytest.raises(ValueError, match=r"missing tensor 'rope_freqs.weight'"):
        Model.from_arrays(llama3, tensors)
    strided = dict(tensors, **{"token_embd.weight": np.asfortranarray(tensors["token_embd.weight"])})
    with pytest.raises(ValueError, match=r"weights\['token_embd.weight'\] must be C-contiguous"):
        Model.from_arrays(spec, strided)


@pytest.mark.parametrize("overrides, message", [
    ({"n_kv_heads": 3}, r"n_heads = 4 is not a multiple of n_kv_heads = 3"),
    ({"rope_dim": 15}, r"rope_dim = 15 is odd"),
    ({"rope_dim": 32}, r"rope_dim = 32 is outside \[0, 16\]"),
    ({"d_model": 1 << 30}, r"d_model = 1073741824 is outside"),
    ({"rope_style": "spiral"}, r"rope_style 'spiral'"),
    ({"rope_scaling": RopeScaling("yarn", factor=4.0)}, r"rope scaling 'yarn' is not supported"),
    ({"architecture": "phi3"}, r"architecture 'phi3' is not supported by the decoder"),
    ({"activation": "relu"}, r"activation 'relu' is not supported \(supported: silu, gelu_tanh\)"),
    ({"embedding_scale": 0.0}, r"embedding_scale must be positive and finite"),
    ({"sliding_window": -1}, r"sliding_window = -1 is outside"),
    ({"sliding_window": 8, "sliding_window_pattern": 0, "rope_base_sliding": 1e4},
     r"sliding_window_pattern = 0 is outside \[1, 4096\]"),
    ({"sliding_window": 8, "sliding_window_pattern": 6}, r"rope_base_sliding must be positive"),
])
def test_bad_config_refused(overrides, message):
    spec = tiny_spec("llama")
    tensors = random_tensors(spec)
    with pytest.raises(ValueError, match=message):
        Model.from_arrays(replace(spec, **overrides), tensors)


def test_precision_checked():
    spec = tiny_spec("llama")
    with pytest.raises(ValueError, match="precision 'fp8'"):
        Model.from_arrays(spec, random_tensors(spec), precision="fp8")


REPO_ROOT = next(folder for folder in Path(__file__).resolve().parents if (folder / "pyproject.toml").is_file())
AGREEMENT_SCRIPT = REPO_ROOT / "bench" / "real_model_agreement.py"


@pytest.mark.real_model
def test_real_model_agrees_with_transformers():
    """SmolLM2-135M: the native BF16 decoder picks the same next token as transformers in float32."""
    gguf_path = models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf_path.exists() or not AGREEMENT_SCRIPT.exists():
        pytest.skip(f"needs {gguf_path} and {AGREEMENT_SCRIPT}")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF files
    spec = importlib.util.spec_from_file_location("real_model_agreement", AGREEMENT_SCRIPT)
    agreement = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agreement)
    result = agreement.compare(gguf_path, agreement.calibration_text("wiki"), positions=300, window=300)
    assert result["top1_agreement"] >= 0.99, result
    assert abs(result["perplexity_relative_difference"]) < 0.01, result
