"""GGUF files made to hurt: refusals are one line naming the file, nothing is allocated for a count the
file cannot back, tensors stay inside the file and apart, and weights that are NaN or infinite are refused
when read. (tests/fuzz/fuzz_gguf_parse.py and fuzz_gguf_model.py search for more.)"""

import struct
import tracemalloc

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from mlspecqd.engine.model import Model
from mlspecqd.gguf import GGUFError, convert, open_gguf
from support.gguf_fixtures import write_model_gguf

STRING, UINT32, UINT64, ARRAY = 8, 4, 10, 9


def gguf_bytes(metadata: list[bytes], tensors: list[bytes], data: bytes = b"", alignment: int = 32) -> bytes:
    """A GGUF v3 file from encoded metadata entries and tensor entries, the data section aligned after them."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)) + b"".join(metadata) + b"".join(tensors)
    return head + b"\0" * (-len(head) % alignment) + data


def string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def entry(key: bytes, value_type: int, value: bytes) -> bytes:
    return string(key) + struct.pack("<I", value_type) + value


def tensor(name: bytes, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def refusal(path, data: bytes) -> str:
    path.write_bytes(data)
    with pytest.raises(GGUFError) as caught:
        open_gguf(path)
    return str(caught.value)


@pytest.mark.parametrize("name", [b"key\nwith\rbreaks\x00", b"\xe2\x80\xa8line separator", b"\x1b[31mred"])
def test_refusals_are_one_line_whatever_a_key_holds(tmp_path, name):
    """Found by fuzz_gguf_parse: a key with a line break put it into the message as it was."""
    message = refusal(tmp_path / "k.gguf", gguf_bytes([entry(name, 99, b"")], []))
    assert message.isprintable() and message.startswith(str(tmp_path / "k.gguf"))
    assert "unknown metadata value type 99" in message


def test_refusals_are_one_line_whatever_a_tensor_name_holds(tmp_path):
    message = refusal(tmp_path / "t.gguf", gguf_bytes([], [tensor(b"w\n1", (32,), int(Q.F32), 1 << 20)]))
    assert message.isprintable() and "tensor w\\n1:" in message and "run past the end" in message


def test_a_long_name_is_cut_in_the_message(tmp_path):
    message = refusal(tmp_path / "l.gguf", gguf_bytes([entry(b"k" * 100_000, 99, b"")], []))
    assert len(message) < 2000 and "(100000 characters)" in message


@pytest.mark.parametrize("what, data", [
    ("tensor count", b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 0)),
    ("metadata count", b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 60)),
    ("string length", gguf_bytes([struct.pack("<Q", 1 << 60)], [])),
    ("string array", gguf_bytes([entry(b"a", ARRAY, struct.pack("<IQ", STRING, 1 << 60))], [])),
    ("number array", gguf_bytes([entry(b"a", ARRAY, struct.pack("<IQ", UINT64, 1 << 60))], [])),
    ("string in an array", gguf_bytes([entry(b"a", ARRAY, struct.pack("<IQQ", STRING, 1, 1 << 60))], [])),
    ("dimensions", gguf_bytes([], [tensor(b"w", (1 << 31, 1 << 31, 1 << 31, 1 << 31), int(Q.F32), 0)])),
])
def test_counts_the_file_cannot_back_are_refused_before_allocating(tmp_path, what, data):
    tracemalloc.start()
    try:
        message = refusal(tmp_path / "c.gguf", data + b"\0" * 64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{what}: {peak} bytes allocated for a file of {len(data) + 64}"
    assert "\n" not in message


def test_a_tensor_offset_near_two_to_the_64_is_refused(tmp_path):
    far = (1 << 64) - 32
    message = refusal(tmp_path / "o.gguf", gguf_bytes([], [tensor(b"w", (8,), int(Q.F32), far)], b"\0" * 32))
    assert "tensor w:" in message and "run past the end of the file" in message


def test_two_tensors_on_the_same_bytes_are_refused(tmp_path):
    entries = [tensor(b"a", (8,), int(Q.F32), 0), tensor(b"b", (8,), int(Q.F32), 0)]
    message = refusal(tmp_path / "s.gguf", gguf_bytes([], entries, b"\0" * 64))
    assert "tensor a: its 32 bytes" in message and "overlap tensor b" in message


@pytest.mark.parametrize("alignment, problem", [(0, "must be a power of two"), (48, "must be a power of two"),
                                                (1 << 31, "run past the end of the file")])
def test_alignments_that_cannot_hold_the_data(tmp_path, alignment, problem):
    metadata = [entry(b"general.alignment", UINT32, struct.pack("<I", alignment))]
    message = refusal(tmp_path / "a.gguf", gguf_bytes(metadata, [tensor(b"w", (8,), int(Q.F32), 0)], b"\0" * 64))
    assert problem in message


def test_a_huge_alignment_without_tensors_is_harmless(tmp_path):
    path = tmp_path / "h.gguf"
    path.write_bytes(gguf_bytes([entry(b"general.alignment", UINT32, struct.pack("<I", 1 << 31))], []))
    with open_gguf(path) as file:
        assert file.alignment == 1 << 31 and file.tensors == {}


# --- NaN and infinity in the weights -----------------------------------------------------------------

NAN_F16 = np.array([np.nan], np.float16).view(np.uint8)
INF_F16 = np.array([np.inf], np.float16).view(np.uint8)


def corrupt_first_block(path, name: str, offset: int, value: bytes) -> None:
    """Overwrites bytes of the first block of tensor `name` (found through open_gguf)."""
    with open_gguf(path) as file:
        start = file.tensor(name).raw.ctypes.data - np.frombuffer(file.buffer, np.uint8).ctypes.data
    data = bytearray(path.read_bytes())
    data[start + offset : start + offset + len(value)] = value
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("ggml_type, offset, value", [
    (Q.F32, 8, np.array([np.nan], np.float32).tobytes()),
    (Q.F32, 0, np.array([-np.inf], np.float32).tobytes()),
    (Q.F16, 2, NAN_F16.tobytes()),
    (Q.BF16, 4, np.array([0x7F80], np.uint16).tobytes()),  # +infinity
    (Q.Q8_0, 0, INF_F16.tobytes()),  # the block scale
    (Q.Q4_1, 2, NAN_F16.tobytes()),  # the block minimum
    (Q.MXFP4, 0, bytes([255])),  # OCP's NaN scale; ggml reads it as 2^127, which overflows
], ids=lambda value: getattr(value, "name", None))
def test_weights_that_are_not_finite_are_refused_when_read(tmp_path, ggml_type, offset, value):
    path = tmp_path / "w.gguf"
    write_model_gguf(path, "llama", {"n_layers": 1}, tensor_type=ggml_type)
    name = "blk.0.ffn_up.weight"
    corrupt_first_block(path, name, offset, value)
    if ggml_type == Q.MXFP4:  # the scale only overflows with the larger codes: make them all 6
        corrupt_first_block(path, name, 1, bytes([0x77] * 16))
    expected = rf"w\.gguf: tensor {name.replace('.', '[.]')}: value \d+ of 6144 is (nan|-?inf)( in BF16)?: NaN and"
    with pytest.raises(GGUFError, match=expected):
        Model.load(path)
    with open_gguf(path) as file, pytest.raises(GGUFError, match=expected):
        file.tensor_f32(name)
    with pytest.raises(GGUFError, match=expected):
        convert(path, tmp_path / "out.gguf", "bf16")
    assert not (tmp_path / "out.gguf").exists()


def test_finite_weights_of_every_magnitude_are_read_but_not_when_bf16_makes_them_infinite(tmp_path):
    path = tmp_path / "big.gguf"
    values = write_model_gguf(path, "llama", {"n_layers": 1}, tensors={
        "blk.0.ffn_up.weight": np.full((96, 64), np.finfo(np.float32).max, np.float32)})
    with open_gguf(path) as file:
        assert np.array_equal(file.tensor_f32("blk.0.ffn_up.weight"), values["blk.0.ffn_up.weight"])
        with pytest.raises(GGUFError, match=r"ffn_up\.weight: value 0 of 6144 is inf in BF16: NaN and infinite"):
            file.tensor_bf16("blk.0.ffn_up.weight")
