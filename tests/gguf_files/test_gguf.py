"""Reading GGUF files (metadata, ModelSpec, tensors), refusing bad ones, and writing converted copies."""

import gc
import math
import mmap
import os
import shutil
import struct
import subprocess
import weakref
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from mlspecqd.engine.quant import cast_to_mxfp4
from mlspecqd.gguf import CASTS, GGUFError, ModelSpec, RopeScaling, convert, open_gguf, write_gguf
from support.gguf_fixtures import (
    ARCHITECTURE_SPECS,
    model_spec,
    models_dir,
    random_blocks,
    tensor_entry_offset,
    write_model_gguf,
)


@pytest.fixture
def llama_path(tmp_path):
    path = tmp_path / "llama.gguf"
    write_model_gguf(path, "llama", tensor_type=Q.Q8_0)
    return path


def spec_of(path) -> ModelSpec:
    with open_gguf(path) as model:
        return model.spec


# --- the model spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURE_SPECS))
def test_spec_matches_what_was_written(tmp_path, architecture):
    path = tmp_path / f"{architecture}.gguf"
    write_model_gguf(path, architecture)
    written = model_spec(architecture)
    spec = spec_of(path)
    head_dim = written["head_dim"] or written["d_model"] // written["n_heads"]
    assert spec.architecture == architecture
    assert (spec.n_layers, spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim) == (
        written["n_layers"], written["d_model"], written["n_heads"], written["n_kv_heads"], head_dim)
    assert (spec.vocab_size, spec.context_length) == (written["vocab_size"], written["context_length"])
    assert spec.rope_dim == head_dim
    assert spec.rope_base == written["rope_base"]
    assert spec.norm_eps == np.float32(written["norm_eps"])
    assert spec.rope_style == ("interleaved" if architecture == "llama" else "neox")
    assert (spec.tied_output, spec.qkv_bias, spec.qk_norm) == (
        written["tied_output"],
        written["qkv_bias"],
        written["qk_norm"],
    )
    assert (spec.n_experts, spec.n_experts_used, spec.expert_d_ff, spec.shared_expert_d_ff) == (
        written["n_experts"], written["n_experts_used"], written["expert_d_ff"], written["shared_expert_d_ff"])
    assert spec.attention_scale == pytest.approx(1 / math.sqrt(head_dim))
    assert spec.rope_scaling == RopeScaling()


def test_gemma3_extras(tmp_path):
    path = tmp_path / "gemma3.gguf"
    write_model_gguf(path, "gemma3")
    spec = spec_of(path)
    assert (spec.activation, spec.post_norms) == ("gelu_tanh", True)
    assert (spec.sliding_window, spec.sliding_window_pattern) == (16, 6)
    assert spec.embedding_scale == pytest.approx(8.0)  # sqrt(d_model = 64)
    assert spec.rope_base_sliding == 10000.0


def test_mixtral_style_llama_moe_takes_expert_width_from_feed_forward_length(tmp_path):
    path = tmp_path / "mixtral.gguf"
    write_model_gguf(path, "llama", {"n_experts": 4, "n_experts_used": 2, "expert_d_ff": 96, "d_ff": 96})
    spec = spec_of(path)
    assert (spec.n_experts, spec.n_experts_used, spec.expert_d_ff, spec.is_moe) == (4, 2, 96, True)
    assert spec.expert_weights_normalized


def test_expert_weight_normalization_per_family(tmp_path):
    write_model_gguf(tmp_path / "a.gguf", "qwen2moe")
    write_model_gguf(tmp_path / "b.gguf", "qwen3moe")
    write_model_gguf(tmp_path / "c.gguf", "qwen2moe", extra_metadata={"qwen2moe.expert_weights_norm": True})
    normalized = [spec_of(tmp_path / name).expert_weights_normalized for name in ("a.gguf", "b.gguf", "c.gguf")]
    assert normalized == [False, True, True]


def test_head_dim_defaults_to_d_model_over_heads_and_key_length_wins(tmp_path):
    write_model_gguf(tmp_path / "a.gguf", "llama", {"d_model": 64, "n_heads": 4})
    write_model_gguf(tmp_path / "b.gguf", "llama", {"d_model": 64, "n_heads": 4, "head_dim": 32})
    assert spec_of(tmp_path / "a.gguf").head_dim == 16
    assert spec_of(tmp_path / "b.gguf").head_dim == 32


@pytest.mark.parametrize(
    "scaling, expected",
    [
        ({"type": "linear", "factor": 2.0}, RopeScaling("linear", 2.0, 0)),
        ({"type": "yarn", "factor": 4.0, "original_context_length": 64}, RopeScaling("yarn", 4.0, 64)),
    ],
)
def test_rope_scaling(tmp_path, scaling, expected):
    write_model_gguf(tmp_path / "m.gguf", "qwen2", {"rope_scaling": scaling})
    assert spec_of(tmp_path / "m.gguf").rope_scaling == expected


def test_llama3_rope_scaling_comes_with_its_frequency_factors(tmp_path):
    factors = np.linspace(1, 8, 8, dtype=np.float32)
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 8192}
    write_model_gguf(
        tmp_path / "m.gguf",
        "llama",
        extra_tensors={"rope_freqs.weight": (factors, Q.F32)},
        extra_metadata={f"llama.rope.scaling.{key}": value for key, value in scaling.items()},
    )
    assert spec_of(tmp_path / "m.gguf").rope_scaling == RopeScaling("llama3", 8.0, 8192, 1.0, 4.0)


def test_unsupported_rope_scaling(tmp_path):
    write_model_gguf(tmp_path / "m.gguf", "qwen2", {"rope_scaling": {"type": "longrope", "factor": 2.0}})
    with pytest.raises(GGUFError, match=r"qwen2\.rope\.scaling\.type: rope scaling 'longrope' is not supported"):
        spec_of(tmp_path / "m.gguf")


# --- metadata and tensors ----------------------------------------------------------------------------


def test_metadata_are_plain_python_values_equal_to_gguf_reader(llama_path):
    reader = gguf.GGUFReader(llama_path)
    with open_gguf(llama_path) as model:
        assert list(model.metadata) == [key for key in reader.fields if not key.startswith("GGUF.")]
        for key, value in model.metadata.items():
            assert type(value) in (int, float, str, bool, list), key
            expected = reader.fields[key].contents()
            assert value == (pytest.approx(expected) if isinstance(value, float) else expected), key
        assert model.metadata["tokenizer.ggml.tokens"][256:259] == ["Ġt", "he", "<|endoftext|>"]


def test_tensors_are_memory_mapped_views_in_numpy_order(llama_path):
    values = {}
    reader = gguf.GGUFReader(llama_path)
    with open_gguf(llama_path) as model:
        info = model.tensors["blk.0.ffn_gate.weight"]
        assert info.shape == (96, 64) and info.ggml_type == Q.Q8_0
        assert info.raw.dtype == np.uint8 and not info.raw.flags.owndata and not info.raw.flags.writeable
        assert isinstance(info.raw.base.obj, mmap.mmap)
        for tensor in reader.tensors:
            assert np.array_equal(model.tensors[tensor.name].raw, tensor.data.reshape(-1).view(np.uint8))
        values = model.tensor_f32("blk.0.ffn_gate.weight")
        bits = model.tensor_bf16("blk.0.ffn_gate.weight")
    assert values.shape == bits.shape == (96, 64) and values.dtype == np.float32 and bits.dtype == np.uint16
    assert np.array_equal(values, gguf.quants.dequantize(info.raw.reshape(96, -1), Q.Q8_0))
    assert float(np.abs(values).sum()) > 0  # still readable after close(): views keep the mapping alive


def test_the_mapping_lives_while_an_array_uses_it_and_goes_after(llama_path):
    model = open_gguf(llama_path)
    mapping = weakref.ref(model.buffer)
    raw = model.tensors["output.weight"].raw
    model.close()
    gc.collect()
    assert mapping() is not None and raw.sum() > 0
    del raw
    gc.collect()
    assert mapping() is None


def test_fixture_values_are_what_the_file_holds(tmp_path):
    stored = write_model_gguf(tmp_path / "m.gguf", "qwen2moe", tensor_type=Q.Q4_0)
    with open_gguf(tmp_path / "m.gguf") as model:
        for name, values in stored.items():
            assert np.array_equal(model.tensor_f32(name), values), name


def test_unknown_tensor_name(llama_path):
    with (
        open_gguf(llama_path) as model,
        pytest.raises(GGUFError, match=r"llama\.gguf: tensor nope\.weight: not in the file"),
    ):
        model.tensor_f32("nope.weight")


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    blocks = random_blocks(Q.IQ2_XXS, 4, np.random.default_rng(0)).reshape(1, -1)
    write_model_gguf(tmp_path / "m.gguf", extra_tensors={"odd.weight": (blocks, Q.IQ2_XXS)})
    with (
        open_gguf(tmp_path / "m.gguf") as model,
        pytest.raises(GGUFError, match=r"m\.gguf: tensor odd\.weight: type IQ2_XXS cannot be dequantized"),
    ):
        model.tensor_bf16("odd.weight")


# --- bad input -------------------------------------------------------------------------------------


def corrupt(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match=r"absent\.gguf: file: No such file"):
        open_gguf(tmp_path / "absent.gguf")


def test_empty_file(tmp_path):
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match=r"e\.gguf: header: file is empty"):
        open_gguf(tmp_path / "e.gguf")


def test_wrong_magic(llama_path):
    corrupt(llama_path, 0, b"GGML")
    with pytest.raises(GGUFError, match=r"llama\.gguf: magic: expected b'GGUF', found b'GGML'"):
        open_gguf(llama_path)


@pytest.mark.parametrize("version, problem", [(1, "GGUF version 1 is not supported"), (3 << 16, "big-endian")])
def test_unsupported_version(llama_path, version, problem):
    corrupt(llama_path, 4, struct.pack("<I", version))
    with pytest.raises(GGUFError, match=f"version: {problem}"):
        open_gguf(llama_path)


def test_truncated_anywhere(llama_path, tmp_path):
    data = llama_path.read_bytes()
    table = tensor_entry_offset(data, "token_embd.weight")
    for cut in (3, 20, 40, table - 5, table + 10, len(data) - 1):
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match=rf"cut{cut}\.gguf: .*(truncated|shorter|run past the end)"):
            open_gguf(short)


def test_absurd_tensor_count(llama_path):
    corrupt(llama_path, 8, struct.pack("<Q", 1 << 60))
    with pytest.raises(GGUFError, match=r"tensor_count: 1152921504606846976 tensors cannot fit"):
        open_gguf(llama_path)


def test_absurd_metadata_count(llama_path):
    corrupt(llama_path, 16, struct.pack("<Q", (1 << 64) - 1))
    with pytest.raises(GGUFError, match=r"metadata_kv_count: .* entries cannot fit"):
        open_gguf(llama_path)


def test_absurd_string_length(llama_path):
    corrupt(llama_path, 24, struct.pack("<Q", 1 << 62))  # the first key's length
    with pytest.raises(GGUFError, match=r"metadata entry 0 key: needs 4611686018427387904 bytes"):
        open_gguf(llama_path)


def test_absurd_array_length(llama_path):
    data = llama_path.read_bytes()
    key = b"tokenizer.ggml.tokens"
    count_offset = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 4 + 4
    corrupt(llama_path, count_offset, struct.pack("<Q", 1 << 61))
    with pytest.raises(GGUFError, match=r"tokenizer\.ggml\.tokens: array of 2305843009213693952 STRING items cannot"):
        open_gguf(llama_path)


def test_unknown_tensor_type_number(llama_path):
    data = llama_path.read_bytes()
    type_offset = tensor_entry_offset(data, "output_norm.weight") + 8 + len("output_norm.weight") + 4 + 8
    corrupt(llama_path, type_offset, struct.pack("<I", 99))
    with pytest.raises(GGUFError, match=r"tensor output_norm\.weight: unknown ggml type 99"):
        open_gguf(llama_path)


def test_tensor_size_disagreeing_with_its_shape(llama_path):
    data = llama_path.read_bytes()
    dims_offset = tensor_entry_offset(data, "blk.0.attn_q.weight") + 8 + len("blk.0.attn_q.weight") + 4
    corrupt(llama_path, dims_offset + 8, struct.pack("<Q", 65))  # 64 rows -> 65: runs into the next tensor
    overlap = r"tensor blk\.0\.attn_q\.weight: its 4420 bytes \(Q8_0, shape \(65, 64\)\) overlap tensor"
    with pytest.raises(GGUFError, match=overlap):
        open_gguf(llama_path)


def test_tensor_data_past_the_end_of_the_file(llama_path):
    data = llama_path.read_bytes()
    dims_offset = tensor_entry_offset(data, "token_embd.weight") + 8 + len("token_embd.weight") + 4
    corrupt(llama_path, dims_offset + 8, struct.pack("<Q", 1 << 40))
    with pytest.raises(GGUFError, match=r"tensor token_embd\.weight: .* run past the end of the file"):
        open_gguf(llama_path)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "m.gguf"
    write_model_gguf(path, extra_metadata={"general.architecture": "mamba"})
    with open_gguf(path) as model:
        assert model.metadata["general.architecture"] == "mamba"  # metadata stay readable
        with pytest.raises(GGUFError, match=r"m\.gguf: general\.architecture: unsupported architecture 'mamba'"):
            _ = model.spec


@pytest.mark.parametrize(
    "key",
    [
        "llama.block_count",
        "llama.embedding_length",
        "llama.attention.head_count",
        "llama.feed_forward_length",
        "llama.context_length",
        "llama.attention.layer_norm_rms_epsilon",
    ],
)
def test_missing_required_key(tmp_path, key):
    write_model_gguf(tmp_path / "m.gguf", drop_metadata=[key])
    with pytest.raises(GGUFError, match=rf"m\.gguf: {key}: required key is missing"):
        spec_of(tmp_path / "m.gguf")


def test_absurd_layer_count(tmp_path):
    key = "llama.block_count"
    write_model_gguf(tmp_path / "m.gguf", drop_metadata=[key], extra_metadata={key: 4_000_000_000})
    with pytest.raises(GGUFError, match=r"llama\.block_count: 4000000000 layers but only \d+ tensors"):
        spec_of(tmp_path / "m.gguf")


def test_experts_in_a_dense_family(tmp_path):
    write_model_gguf(tmp_path / "m.gguf", "qwen2", extra_metadata={"qwen2.expert_count": 4})
    with pytest.raises(GGUFError, match=r"qwen2\.expert_count: experts in a qwen2 model are not supported"):
        spec_of(tmp_path / "m.gguf")


def test_key_of_the_wrong_type(tmp_path):
    key = "llama.block_count"
    write_model_gguf(tmp_path / "m.gguf", drop_metadata=[key], extra_metadata={key: "two"})
    with pytest.raises(GGUFError, match=r"llama\.block_count: expected an integer, got 'two'"):
        spec_of(tmp_path / "m.gguf")


def test_metadata_disagreeing_with_tensor_shapes(tmp_path):
    key = "llama.feed_forward_length"
    write_model_gguf(tmp_path / "m.gguf", drop_metadata=[key], extra_metadata={key: 128})
    with pytest.raises(GGUFError, match=r"blk\.0\.ffn_gate\.weight: shape \(96, 64\) does not match \(128, 64\)"):
        spec_of(tmp_path / "m.gguf")


def test_missing_tensor(tmp_path):
    write_model_gguf(tmp_path / "m.gguf", "qwen3moe", drop_tensors=["blk.1.ffn_down_exps.weight"])
    with pytest.raises(GGUFError, match=r"tensor blk\.1\.ffn_down_exps\.weight: missing"):
        spec_of(tmp_path / "m.gguf")


def test_biases_in_only_some_layers(tmp_path):
    write_model_gguf(tmp_path / "m.gguf", "qwen2", drop_tensors=["blk.1.attn_k.bias"])
    with pytest.raises(GGUFError, match=r"tensor blk\.1\.attn_k\.bias: missing while other layers have"):
        spec_of(tmp_path / "m.gguf")


def test_vocab_size_key_disagreeing_with_the_embedding(tmp_path):
    write_model_gguf(tmp_path / "m.gguf", drop_metadata=["llama.vocab_size"], extra_metadata={"llama.vocab_size": 321})
    with pytest.raises(GGUFError, match=r"llama\.vocab_size: 321 differs from the 320 rows of token_embd\.weight"):
        spec_of(tmp_path / "m.gguf")


def test_more_tokens_than_embedding_rows(tmp_path):
    tokens = [f"t{index}" for index in range(321)]
    write_model_gguf(tmp_path / "m.gguf", extra_metadata={"tokenizer.ggml.tokens": tokens})
    with pytest.raises(GGUFError, match=r"tokenizer\.ggml\.tokens: 321 tokens but the embedding has only 320 rows"):
        spec_of(tmp_path / "m.gguf")


# --- writing and converting ------------------------------------------------------------------------


def read_back(path):
    reader = gguf.GGUFReader(path)
    metadata = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    return reader, metadata


@pytest.mark.parametrize(
    "target, matrix_type, file_type",
    [("bf16", Q.BF16, gguf.LlamaFileType.MOSTLY_BF16), ("f32", Q.F32, gguf.LlamaFileType.ALL_F32)],
)
def test_convert_round_trip_checked_by_gguf_reader(tmp_path, target, matrix_type, file_type):
    source_path, out_path = tmp_path / "in.gguf", tmp_path / "out.gguf"
    write_model_gguf(source_path, "qwen2", tensor_type=Q.Q8_0, tensor_types={"token_embd.weight": Q.Q4_0})
    convert(source_path, out_path, target)
    _, source_metadata = read_back(source_path)
    reader, metadata = read_back(out_path)
    assert metadata.pop("general.file_type") == file_type
    source_metadata.pop("general.file_type")
    assert metadata == source_metadata
    with open_gguf(source_path) as source:
        assert [tensor.name for tensor in reader.tensors] == list(source.tensors)
        for tensor in reader.tensors:
            one_dimensional = len(source.tensors[tensor.name].shape) == 1
            assert tensor.tensor_type == (Q.F32 if one_dimensional else matrix_type), tensor.name
            if tensor.tensor_type == Q.BF16:
                expected = source.tensor_bf16(tensor.name)
            else:
                expected = source.tensor_f32(tensor.name)
            written = tensor.data.view(np.uint8).view(expected.dtype).reshape(expected.shape)
            assert np.array_equal(written, expected), tensor.name
        with open_gguf(out_path) as converted:
            assert converted.spec == source.spec


def test_convert_keeps_moe_routers_in_f32_and_casts_experts(tmp_path):
    source_path, out_path = tmp_path / "in.gguf", tmp_path / "out.gguf"
    stored = write_model_gguf(source_path, "qwen3moe")
    convert(source_path, out_path, "mxfp4")
    with open_gguf(out_path) as converted:
        router = converted.tensor("blk.1.ffn_gate_inp.weight")
        assert router.ggml_type == Q.F32
        assert np.array_equal(converted.tensor_f32(router.name), stored[router.name])
        assert converted.tensor("blk.1.ffn_up_exps.weight").ggml_type == Q.MXFP4
        assert converted.spec.n_experts == 4


def test_convert_carries_metadata_bytes_unchanged(tmp_path):
    source_path, out_path = tmp_path / "in.gguf", tmp_path / "out.gguf"
    write_model_gguf(source_path, "gemma3")
    convert(source_path, out_path, "bf16")
    source, out = source_path.read_bytes(), out_path.read_bytes()
    start = 24
    end = tensor_entry_offset(source, "token_embd.weight")
    def file_type_entry(file_type):
        return struct.pack("<Q", 17) + b"general.file_type" + struct.pack("<II", gguf.GGUFValueType.UINT32, file_type)

    expected = source[start:end].replace(
        file_type_entry(gguf.LlamaFileType.ALL_F32), file_type_entry(gguf.LlamaFileType.MOSTLY_BF16)
    )
    assert out[start:end] == expected


def test_failed_conversion_leaves_no_file(tmp_path, monkeypatch):
    source_path, out_path = tmp_path / "in.gguf", tmp_path / "out.gguf"
    write_model_gguf(source_path, "llama")
    calls = []

    def failing_cast(matrix):
        calls.append(matrix.shape)
        if len(calls) > 4:  # after the probes, fail on a real tensor mid-file
            raise ValueError("disk on fire")
        return CASTS["f32"](matrix)

    monkeypatch.setitem(CASTS, "broken", failing_cast)
    with pytest.raises(GGUFError, match=r"out\.gguf: tensor .*: could not be produced: disk on fire"):
        convert(source_path, out_path, "broken")
    assert sorted(os.listdir(tmp_path)) == ["in.gguf"]


def test_conversion_refuses_a_type_it_cannot_read_before_writing(tmp_path):
    blocks = random_blocks(Q.IQ2_XXS, 4, np.random.default_rng(0)).reshape(1, -1)
    write_model_gguf(tmp_path / "in.gguf", extra_tensors={"odd.weight": (blocks, Q.IQ2_XXS)})
    with pytest.raises(GGUFError, match=r"in\.gguf: tensor odd\.weight: type IQ2_XXS cannot be converted"):
        convert(tmp_path / "in.gguf", tmp_path / "out.gguf", "bf16")
    assert sorted(os.listdir(tmp_path)) == ["in.gguf"]


def test_unknown_target(tmp_path, llama_path):
    with pytest.raises(GGUFError, match=r"target: unknown target 'q3' \(choose from bf16, f32"):
        convert(llama_path, tmp_path / "out.gguf", "q3")
    assert not (tmp_path / "out.gguf").exists()


def test_a_cast_plugged_into_casts_is_used(tmp_path, monkeypatch, llama_path):
    def to_f16(matrix):
        return matrix.astype(np.float16).view(np.uint8), Q.F16

    monkeypatch.setitem(CASTS, "f16", to_f16)
    convert(llama_path, tmp_path / "out.gguf", "f16")
    reader, metadata = read_back(tmp_path / "out.gguf")
    assert metadata["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert {tensor.tensor_type for tensor in reader.tensors} == {Q.F16, Q.F32}


def test_write_refuses_to_overwrite_its_source(llama_path):
    with (
        open_gguf(llama_path) as source,
        pytest.raises(GGUFError, match="would overwrite the file it is converted from"),
    ):
        write_gguf(llama_path, source, [])


def test_write_without_file_type_drops_the_key(tmp_path, llama_path):
    with open_gguf(llama_path) as source:
        write_gguf(tmp_path / "empty.gguf", source, [])
    reader, metadata = read_back(tmp_path / "empty.gguf")
    assert "general.file_type" not in metadata and len(reader.tensors) == 0
    assert metadata["general.architecture"] == "llama"


# --- the real checkpoints --------------------------------------------------------------------------

REAL = {
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf": ("qwen2", 28, 1536, 12, 2, 128, 8960, 151936, False, True),
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf": ("qwen2", 24, 896, 14, 2, 64, 4864, 151936, False, True),
    "gemma-3-270m-q4_k_m.gguf": ("gemma3", 18, 640, 4, 1, 256, 2048, 262144, True, False),
    "SmolLM2-135M-Instruct.Q4_1.gguf": ("llama", 30, 576, 9, 3, 64, 1536, 49152, True, False),
}


def real_model(name: str) -> Path:
    path = models_dir() / name
    if not path.exists():
        pytest.skip(f"{path} is not cached")
    return path


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_model_specs(name):
    spec = spec_of(real_model(name))
    architecture, layers, d_model, heads, kv_heads, head_dim, d_ff, vocab, tied, bias = REAL[name]
    assert (spec.architecture, spec.n_layers, spec.d_model) == (architecture, layers, d_model)
    assert (spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.d_ff) == (heads, kv_heads, head_dim, d_ff)
    assert (spec.vocab_size, spec.tied_output, spec.qkv_bias) == (vocab, tied, bias)
    assert spec.qk_norm == (architecture == "gemma3")


# The llama.cpp binaries, found as bench/llamacpp.py finds them.
LLAMA_CPP_BIN = os.environ.get("LLAMA_CPP_BIN", str(Path.home() / ".cache" / "llamacpp-ref" / "bin"))


@pytest.mark.real_model
def test_real_model_converts_to_bf16(tmp_path):
    source_path = real_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    out_path = tmp_path / "smollm2-bf16.gguf"
    convert(source_path, out_path, "bf16")
    with open_gguf(source_path) as source, open_gguf(out_path) as converted:
        assert converted.metadata["tokenizer.ggml.tokens"] == source.metadata["tokenizer.ggml.tokens"]
        assert converted.spec == source.spec
        for name in ("token_embd.weight", "blk.3.ffn_down.weight", "blk.29.attn_norm.weight"):
            expected = source.tensor_bf16(name) if len(source.tensors[name].shape) == 2 else source.tensor_f32(name)
            assert np.array_equal(converted.tensors[name].raw.view(expected.dtype).reshape(expected.shape), expected)

    quantize = shutil.which("llama-quantize", path=LLAMA_CPP_BIN)
    if quantize:  # llama.cpp's own BF16 conversion gives the same bytes
        reference_path = tmp_path / "llama-quantize-bf16.gguf"
        command = [quantize, "--allow-requantize", str(source_path), str(reference_path), "BF16", "2"]
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        with open_gguf(reference_path) as reference, open_gguf(out_path) as converted:
            assert converted.metadata == reference.metadata
            for name, info in reference.tensors.items():
                assert converted.tensors[name].ggml_type == info.ggml_type, name
                assert np.array_equal(converted.tensors[name].raw, info.raw), name
    bench = shutil.which("llama-bench", path=LLAMA_CPP_BIN)
    if bench:  # llama.cpp loads the file and runs it
        command = [bench, "-m", str(out_path), "-p", "0", "-n", "1", "-t", "2"]
        subprocess.run(command, check=True, capture_output=True, timeout=300)


@pytest.mark.real_model
def test_real_model_converts_to_mxfp4_that_llama_cpp_runs(tmp_path):
    source_path = real_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    out_path = tmp_path / "smollm2-mxfp4.gguf"
    convert(source_path, out_path, "mxfp4")
    with open_gguf(source_path) as source, open_gguf(out_path) as converted:
        assert converted.tensors["blk.0.attn_q.weight"].ggml_type == Q.MXFP4
        assert converted.tensors["token_embd.weight"].ggml_type == Q.BF16  # a row lookup stays BF16
        name = "blk.3.ffn_down.weight"
        expected = cast_to_mxfp4(source.tensor_f32(name), name)
        assert np.array_equal(converted.tensors[name].raw.reshape(expected.shape), expected)
    completion = shutil.which("llama-completion", path=LLAMA_CPP_BIN)
    if completion:  # llama.cpp reads our MXFP4 file and decodes with it
        command = [completion, "-m", str(out_path), "-p", "def add(a, b):", "-n", "8", "--temp", "0", "-t", "2",
                   "-no-cnv"]
        result = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
        assert result.stdout.startswith("def add(a, b):") and len(result.stdout) > len("def add(a, b):")
