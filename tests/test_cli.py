"""The command line as a user meets it: exit code 0 on success, 2 with a one-line message on bad input."""

import subprocess
import sys

import numpy as np
from gguf_fixtures import write_model_gguf

from mlspecqd.gguf import open_gguf


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlspecqd", *args], capture_output=True, text=True)


def test_convert_to_bf16_round_trips(tmp_path):
    source = tmp_path / "tiny.gguf"
    write_model_gguf(source, "qwen2")
    out = tmp_path / "tiny-bf16.gguf"
    result = run_cli("convert", str(source), str(out), "--type", "bf16")
    assert result.returncode == 0, result.stderr
    with open_gguf(source) as original, open_gguf(out) as converted:
        assert converted.metadata["tokenizer.ggml.tokens"] == original.metadata["tokenizer.ggml.tokens"]
        name = "blk.0.ffn_up.weight"
        assert np.array_equal(converted.tensor_bf16(name), original.tensor_bf16(name))


def test_convert_bad_input_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(3))
    out = tmp_path / "out.gguf"
    result = run_cli("convert", str(bad), str(out), "--type", "bf16")
    assert result.returncode == 2
    assert "bad.gguf" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [bad]


def test_pull_unknown_name_exits_2():
    result = run_cli("pull", "no-such-model")
    assert result.returncode == 2
    assert "unknown model 'no-such-model'" in result.stderr


def test_convert_to_mxfp4_casts_linear_weights_only(tmp_path):
    source = tmp_path / "tiny.gguf"
    write_model_gguf(source, "llama")
    out = tmp_path / "tiny-mxfp4.gguf"
    result = run_cli("convert", str(source), str(out), "--type", "mxfp4")
    assert result.returncode == 0, result.stderr
    with open_gguf(out) as converted:
        assert converted.tensors["blk.0.ffn_up.weight"].ggml_type.name == "MXFP4"
        assert converted.tensors["token_embd.weight"].ggml_type.name == "BF16"
